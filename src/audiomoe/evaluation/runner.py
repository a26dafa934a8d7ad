"""Evaluate an LALM on manifest records: batched generation, per-task metrics, task-group and per-attribute
breakdowns, per-item scores, and the modality gap (same items with the transcript as text in place of the audio).

Scores. Each task is scored with the metric its registry entry names, with the task's answer normaliser (labels,
a named one) and each item's language (the record's ``language`` attribute, else the task's). To average tasks
into groups, a task's ``score`` is its metric's value on a 0-1 higher-is-better scale: direction and scale are on
the metric's registry entry (``register_metric("wer", higher_is_better=False)``, ``scale=100`` for BLEU), so no
metric is special-cased here; a group's score is the mean over its tasks.

Items. A report also lists every item's sufficient statistics (``items``, see :func:`score_items`), so that
:mod:`audiomoe.evaluation.stats` can resample items and recompute every score above exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from audiomoe.data.manifest import AudioRecord
from audiomoe.data.tasks import get_task
from audiomoe.evaluation.metrics import ITEM_STATS, compute_metric, primary_value, task_value_to_score
from audiomoe.models.batching import RecordBatcher
from audiomoe.tensors import to_device

MAX_ATTRIBUTE_VALUES = 24  # attributes with more distinct values (numbers, sentences) are not broken down


@dataclass
class GenerationSettings:
    batch_size: int = 16
    max_new_tokens: int = 48
    progress: bool = True


def _batches(records: Sequence[AudioRecord], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar duration (less padding), covering every record once."""
    order = sorted(range(len(records)), key=lambda i: records[i].duration or 0.0)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_answers(
    model: Any,
    batcher: RecordBatcher,
    records: Sequence[AudioRecord],
    settings: GenerationSettings,
    text_prompts: Sequence[str] | None = None,
) -> list[str]:
    """One answer per record, in order. ``text_prompts``: ask these text-only prompts instead of the audio."""
    answers: list[str] = [""] * len(records)
    device = next(model.parameters()).device
    batches = _batches(records, settings.batch_size)
    for indices in tqdm(batches, desc="generate", disable=not settings.progress, leave=False):
        if text_prompts is not None:
            batch = batcher.text_batch([text_prompts[i] for i in indices])
        else:
            chosen = [records[i] for i in indices]
            batch = batcher.batch(chosen, [r.instruction for r in chosen], with_answers=False)
        batch = to_device(batch, device)
        for i, answer in zip(indices, model.generate(**batch, max_new_tokens=settings.max_new_tokens)):
            answers[i] = answer
    return answers


def task_score(metric: str, scores: dict[str, float]) -> float:
    """One 0-1 higher-is-better number per task (see the module docstring): the metric's headline value divided
    by its scale, or ``max(0, 1 - value / scale)`` for a metric registered with ``higher_is_better=False``."""
    return task_value_to_score(metric, primary_value(metric, scores))


def item_language(record: AudioRecord) -> str:
    """The language a record's answer is in: its ``language`` attribute, else its task's (``""`` = unknown)."""
    return record.attributes.get("language") or get_task(record.task).language


def score_items(
    keys: Sequence[str], tasks: Sequence[str], predictions: Sequence[str], answers: Sequence[str],
    languages: Sequence[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One entry per item, in order: ``{key, task, group, metric}`` plus the item's sufficient statistics.

    The statistics come from the metric's registry entry (``items=``): WER tasks ``errors`` and ``words`` (edit
    distance and reference word count after the same normalisation as the task-level WER), so that a task's
    ``sum(errors) / sum(words)`` is its corpus WER exactly; CER ``errors`` and ``chars``; accuracy and exact
    match ``correct`` (0 / 1), whose mean is the task's score. Metrics without per-item statistics (macro-F1,
    BLEU) give none (``compare`` refuses them).
    """
    if not len(keys) == len(tasks) == len(predictions) == len(answers):
        raise ValueError(
            f"{len(keys)} keys, {len(tasks)} tasks, {len(predictions)} predictions, {len(answers)} answers"
        )
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(tasks):
        by_task[name].append(i)
    items: list[dict[str, Any]] = [{} for _ in keys]
    for name, indices in by_task.items():
        task = get_task(name)
        for i in indices:
            items[i] = {"key": keys[i], "task": name, "group": task.group, "metric": task.metric}
        stats = ITEM_STATS.get(task.metric)
        if stats is None:
            continue
        preds, refs = [predictions[i] for i in indices], [answers[i] for i in indices]
        langs = [languages[i] if languages else task.language for i in indices]
        for i, entry in zip(indices, stats(preds, refs, normalize=task.scoring_normalizer, languages=langs)):
            items[i] |= entry
    return items


def score_predictions(records: Sequence[AudioRecord], predictions: Sequence[str]) -> dict[str, Any]:
    """Per-task metrics, task-group scores, per-attribute breakdowns and per-item scores of ``predictions``."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_task[record.task].append(i)
    tasks: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, indices in sorted(by_task.items()):
        task = get_task(name)

        def scored(subset: list[int], task: Any = task) -> dict[str, float]:
            preds, refs = [predictions[i] for i in subset], [records[i].answer for i in subset]
            langs = [item_language(records[i]) for i in subset]
            return compute_metric(
                task.metric, preds, refs, normalize=task.scoring_normalizer, languages=langs
            )

        result = scored(indices)
        tasks[name] = {
            "group": task.group,
            "metric": task.metric,
            **result,
            "score": task_score(task.metric, result),
        }
        values: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i in indices:
            for attr, value in records[i].attributes.items():
                values[attr][value].append(i)
        attributes[name] = {
            attr: {value: {"n": len(sub), "score": task_score(task.metric, scored(sub))} for value, sub in sorted(v.items())}
            for attr, v in sorted(values.items())
            if 1 < len(v) <= MAX_ATTRIBUTE_VALUES
        }  # fmt: skip
    groups: dict[str, list[float]] = defaultdict(list)
    for result in tasks.values():
        groups[result["group"]].append(result["score"])
    group_scores = {g: sum(s) / len(s) for g, s in sorted(groups.items())}
    overall = sum(group_scores.values()) / len(group_scores) if group_scores else float("nan")
    return {
        "tasks": tasks,
        "groups": group_scores,
        "overall": overall,
        "attributes": attributes,
        "n": len(records),
        "items": score_items(
            [r.key for r in records],
            [r.task for r in records],
            predictions,
            [r.answer for r in records],
            [item_language(r) for r in records],
        ),
    }


def text_prompt(record: AudioRecord) -> str:
    """The record's question with its transcript in place of the audio."""
    return f'"{record.transcript}"\n{record.instruction}'


def modality_gap(
    model: Any, batcher: RecordBatcher, records: Sequence[AudioRecord], settings: GenerationSettings,
    audio_predictions: Sequence[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Per semantic task (content that a transcript carries: what is said, which digit, which keyword): score
    with the audio, score with the transcript as text in its place, and audio − text. Paralinguistic questions
    are left out on purpose: a transcript does not say who spoke or how."""
    chosen = [i for i, r in enumerate(records) if r.transcript and get_task(r.task).group == "semantic"]
    if not chosen:
        return {}
    subset = [records[i] for i in chosen]
    if audio_predictions is None:
        audio = generate_answers(model, batcher, subset, settings)
    else:
        audio = [audio_predictions[i] for i in chosen]
    text = generate_answers(model, batcher, subset, settings, text_prompts=[text_prompt(r) for r in subset])
    audio_scores, text_scores = score_predictions(subset, audio), score_predictions(subset, text)
    return {
        name: {
            "n": result["n"],
            "audio": result["score"],
            "text": text_scores["tasks"][name]["score"],
            "gap": result["score"] - text_scores["tasks"][name]["score"],
        }
        for name, result in audio_scores["tasks"].items()
    }


def markdown_report(report: dict[str, Any], title: str = "Evaluation") -> str:
    """Tables of a :func:`score_predictions` result (plus ``modality_gap`` when present)."""
    lines = [f"## {title}", "", f"{report['n']} items; overall score {report['overall']:.3f}", ""]
    lines += ["| task | group | metric | value | score | n |", "|---|---|---|---|---|---|"]
    for name, t in report["tasks"].items():
        lines.append(
            f"| {name} | {t['group']} | {t['metric']} | {t[t['metric']]:.3f} | {t['score']:.3f} | {t['n']} |"
        )
    lines += ["", "| group | score |", "|---|---|"]
    lines += [f"| {g} | {s:.3f} |" for g, s in report["groups"].items()]
    gap = report.get("modality_gap")
    if gap:
        lines += [
            "",
            "Modality gap (audio − text, same items)",
            "",
            "| task | audio | text | gap | n |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['audio']:.3f} | {v['text']:.3f} | {v['gap']:+.3f} | {v['n']} |"
            for k, v in gap.items()
        ]
    return "\n".join(lines) + "\n"
