"""Whole evaluations of a saved model directory: manifests (per task / group / attribute, modality gap) and
MMAU / MMAR-style multiple-choice JSON. Both return a JSON-able report with a ``markdown`` rendering."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from audiomoe.data.manifest import AudioRecord, read_manifest
from audiomoe.data.tasks import TASKS_FILE_NAME, load_tasks_file
from audiomoe.evaluation.mcq import load_mcq_json
from audiomoe.evaluation.metrics import compute_metric
from audiomoe.evaluation.runner import (
    GenerationSettings,
    generate_answers,
    markdown_report,
    modality_gap,
    score_predictions,
)
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.feature_cache import FeatureCache


def load_model_tasks(model_dir: str | Path) -> None:
    """Register the tasks a model was trained with (``MODEL/tasks.yaml``, written by training), so it is scored
    with them; a ``--tasks`` file that defines one of them differently is an error."""
    saved = Path(model_dir) / TASKS_FILE_NAME
    if saved.is_file():
        load_tasks_file(saved)


def load_model(model_dir: str | Path) -> Any:
    from audiomoe.models.lalm import AudioLanguageModel

    load_model_tasks(model_dir)

    model = AudioLanguageModel.from_pretrained(model_dir)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def evaluate_records(
    model: Any,
    records: list[AudioRecord],
    settings: GenerationSettings,
    modality: bool = False,
    cache: FeatureCache | None = None,
) -> dict[str, Any]:
    """Generate for every record and score; ``modality`` adds the audio-vs-text gap per task."""
    batcher = RecordBatcher(records, model.processor, cache)
    started = time.perf_counter()
    predictions = generate_answers(model, batcher, records, settings)
    report = score_predictions(records, predictions)
    report["seconds"] = round(time.perf_counter() - started, 2)
    if modality:
        report["modality_gap"] = modality_gap(
            model, batcher, records, settings, audio_predictions=predictions
        )
    report["predictions"] = [
        {"key": r.key, "task": r.task, "prediction": p, "answer": r.answer}
        for r, p in zip(records, predictions)
    ]
    return report


def evaluate_manifests(
    model_dir: str | Path,
    manifests: list[str],
    modality: bool = False,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    limit: int = 0,
    on_bad_line: str = "fail",
    feature_cache: str = "",
) -> dict[str, Any]:
    model = load_model(model_dir)
    records: list[AudioRecord] = []
    for path in manifests:
        records += read_manifest(path, on_error=on_bad_line)  # type: ignore[arg-type]
    if limit:
        records = records[:limit]
    if not records:
        raise ValueError(f"no records in {', '.join(manifests)}")
    cache = None
    if feature_cache:
        cache = FeatureCache(feature_cache, model)
        cache.ensure([r.audio for r in records])
    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens)
    report = evaluate_records(model, records, settings, modality, cache)
    report["checkpoint"], report["manifests"] = str(model_dir), list(manifests)
    report["markdown"] = markdown_report(report, f"{model_dir} on {', '.join(manifests)}")
    return report


def evaluate_mcq(
    model_dir: str | Path, path: str, batch_size: int = 16, max_new_tokens: int = 48, limit: int = 0
) -> dict[str, Any]:
    """Multiple-choice accuracy, overall and per category, on an MMAU / MMAR-format JSON file."""
    model = load_model(model_dir)
    items = load_mcq_json(path)[: limit or None]
    for item in items:
        if not Path(item.audio).is_file():
            raise FileNotFoundError(f"{path}: item {item.id}: audio file {item.audio!r} not found")
    records = [
        AudioRecord(key=item.id, audio=item.audio, task="audio_qa", instruction=item.prompt(),
                    answer=item.choices[item.answer_index], attributes={"category": item.category})
        for item in items
    ]  # fmt: skip
    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens)
    predictions = generate_answers(model, RecordBatcher(records, model.processor), records, settings)
    overall = compute_metric("mcq_accuracy", predictions, items)
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_category[item.category or "all"].append(i)
    categories = {
        name: compute_metric("mcq_accuracy", [predictions[i] for i in idx], [items[i] for i in idx])
        for name, idx in sorted(by_category.items())
    }
    lines = [f"## {model_dir} on {path}", "", f"MCQ accuracy {overall['mcq_accuracy']:.3f} "
             f"({overall['n']} items, {overall['unparsed']} unparsed)", "", "| category | accuracy | n |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v['mcq_accuracy']:.3f} | {v['n']} |" for k, v in categories.items()]
    return {
        "checkpoint": str(model_dir),
        "mcq": path,
        "overall": overall,
        "categories": categories,
        "predictions": [{"id": it.id, "prediction": p} for it, p in zip(items, predictions)],
        "markdown": "\n".join(lines) + "\n",
    }
