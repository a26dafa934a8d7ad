"""Frozen-encoder feature cache (``audiomoe bench feature-cache``): adapter-only training steps from the cache vs
recomputing the encoder.

    audiomoe bench feature-cache --manifest demo-out/corpus/train.jsonl [--preset whisper-tiny-en]

Both arms run the same optimizer steps (by default with the LLM size the demo trains, ``--llm preset`` for the
preset's larger one) (adapter trains; encoder and LLM frozen; the backward pass still runs
through the LLM) on the same batches of 16 clips, data loading included: "recompute" decodes the audio, makes
log-mel features and runs the encoder; "cache" reads the encoder outputs from the memory-mapped cache. The arms
alternate step by step and the medians are compared, so a noisy neighbour slows both alike. The ratio is
printed from this run's own measurements.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import torch

from audiomoe.data.manifest import read_manifest
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import DEMO_LLM_SIZE, build_preset


def run_benchmark(
    manifest: str, preset: str = "whisper-tiny-en", encoder: str = "", llm: str = "demo", batch_size: int = 16,
    steps: int = 12,
) -> dict[str, Any]:  # fmt: skip
    """Median adapter-only step time recomputing the encoder vs reading the cache, same batches, interleaved."""
    overrides: dict[str, Any] = {"freeze": {"encoder": True, "adapter": False, "llm": True}}
    if encoder:
        overrides["encoder"] = {"path": encoder}
    if llm == "demo":
        overrides["llm"] = {"config": {**build_preset(preset, "mlp").llm.config, **DEMO_LLM_SIZE}}
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset(preset, "mlp", **overrides)).train()
    records = read_manifest(manifest)[: batch_size * (steps + 2)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir, model)
        started = time.perf_counter()
        cache.ensure([r.audio for r in records], progress=False)
        fill_seconds = time.perf_counter() - started
        batchers = {
            "recompute": RecordBatcher(records, model.processor),
            "cache": RecordBatcher(records, model.processor, cache),
        }
        times: dict[str, list[float]] = {name: [] for name in batchers}
        for step in range(steps + 2):
            indices = list(range(step * batch_size, (step + 1) * batch_size))
            for name, batcher in batchers.items():
                begin = time.perf_counter()
                loss = model(**batcher.collate(indices)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step >= 2:  # warm-up steps are not measured
                    times[name].append(time.perf_counter() - begin)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "preset": preset,
        "encoder": encoder or "preset default",
        "llm": llm,
        "batch_size": batch_size,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "median_step_seconds": {k: round(v, 4) for k, v in medians.items()},
        "speedup": round(medians["recompute"] / medians["cache"], 2),
        "cache_fill_seconds": round(fill_seconds, 2),
        "cache_fill_clips": len(records),
    }


def format_result(result: dict[str, Any]) -> str:
    ms = {k: v * 1000 for k, v in result["median_step_seconds"].items()}
    return (
        f"adapter-only step ({result['preset']}, llm {result['llm']}, batch {result['batch_size']}, "
        f"{result['threads']} thread(s)): recompute encoder {ms['recompute']:.0f} ms, from cache {ms['cache']:.0f} ms "
        f"-> {result['speedup']:.2f}x faster from the cache"
    )
