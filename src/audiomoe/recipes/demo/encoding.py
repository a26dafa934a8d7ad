"""Clip-length encoding (``trim_to_clip``) against full 30 s Whisper windows: speed, feature change, and the
effect on a trained arm's scores."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from audiomoe.data.manifest import AudioRecord
from audiomoe.evaluation.evaluate import evaluate_records
from audiomoe.evaluation.runner import GenerationSettings
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.recipes.demo.settings import DemoSettings


@contextlib.contextmanager
def encoder_window(model: AudioLanguageModel, trim_to_clip: bool) -> Iterator[None]:
    """Temporarily encode at the clip's own length (True) or as full 30 s Whisper windows (False)."""
    saved = model.encoder.config
    model.encoder.config = dataclasses.replace(saved, trim_to_clip=trim_to_clip)
    try:
        yield
    finally:
        model.encoder.config = saved


def trim_measurement(
    model: AudioLanguageModel, records: list[AudioRecord], cache_root: Path, saved: Path
) -> dict[str, Any]:
    """Encode the same clips at their own length and as full 30 s windows into the feature cache (each mode has
    its own encoder identity): time per mode and how much the features differ. Kept in ``saved`` for reruns."""
    if saved.is_file():
        return json.loads(saved.read_text())
    paths = [r.audio for r in records]
    results: dict[str, Any] = {}
    frames = {}
    for trim in (True, False):
        with encoder_window(model, trim):
            cache = FeatureCache(cache_root, model)
            started = time.perf_counter()
            cache.ensure(paths, progress=False)  # audio decoding and log-mel included in both modes
            results["seconds_trim" if trim else "seconds_full"] = round(time.perf_counter() - started, 3)
            frames[trim] = [torch.from_numpy(cache.get(p).frames.astype("float32")) for p in paths]
    cos = [
        torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
        for a, b in zip(frames[True], frames[False])
    ]
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(frames[True], frames[False])]
    results.update(
        clips=len(paths),
        mean_clip_seconds=round(sum(r.duration or 0.0 for r in records) / len(records), 2),
        speedup=round(results["seconds_full"] / max(results["seconds_trim"], 1e-9), 1),
        mean_cosine=round(sum(cos) / len(cos), 4),
        mean_relative_l2=round(sum(rel) / len(rel), 4),
    )
    saved.write_text(json.dumps(results, indent=1) + "\n")
    return results


def trim_effect_on_results(
    model: AudioLanguageModel, records: list[AudioRecord], cache_root: Path, settings: DemoSettings
) -> dict[str, float]:
    """The trained model on the probe clips with clip-length vs full-window features (it was trained on the
    former): overall score for each, from the caches :func:`trim_measurement` filled."""
    generation = GenerationSettings(batch_size=32, max_new_tokens=settings.max_new_tokens, progress=False)
    scores = {}
    for trim in (True, False):
        with encoder_window(model, trim):
            report = evaluate_records(model, records, generation, cache=FeatureCache(cache_root, model))
        scores["score_trim" if trim else "score_full_window"] = round(report["overall"], 4)
    return scores
