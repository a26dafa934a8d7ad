"""Frozen-encoder feature cache: adapter-only training steps from the cache vs recomputing the encoder.

    .venv/bin/python benchmarks/feature_cache.py --manifest demo-out/corpus/train.jsonl [--preset whisper-tiny-en]

Both arms run the same optimizer steps (by default with the LLM size the demo trains, ``--llm preset`` for the
preset's larger one) (adapter trains; encoder and LLM frozen; the backward pass still runs
through the LLM) on the same batches of 16 clips, data loading included: "recompute" decodes the audio, makes
log-mel features and runs the encoder; "cache" reads the encoder outputs from the memory-mapped cache. The arms
alternate step by step and the medians are compared, so a noisy neighbour slows both alike. The ratio is
printed from this run's own measurements.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from audiomoe.data.manifest import read_manifest
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.recipes.demo.settings import FULL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest", required=True, help="a corpus manifest (e.g. demo-out/corpus/train.jsonl)"
    )
    parser.add_argument("--preset", default="whisper-tiny-en")
    parser.add_argument("--encoder", default="", help="override encoder.path (e.g. base)")
    parser.add_argument(
        "--llm", choices=["demo", "preset"], default="demo",
        help="demo: the LLM size `audiomoe demo` trains (default); preset: the preset's own LLM",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--steps", type=int, default=12, help="measured steps per arm (after 2 warm-up steps)"
    )
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()

    overrides = {"freeze": {"encoder": True, "adapter": False, "llm": True}}
    if args.encoder:
        overrides["encoder"] = {"path": args.encoder}
    if args.llm == "demo":
        overrides["llm"] = {"config": {**build_preset(args.preset, "mlp").llm.config, **FULL.llm}}
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset(args.preset, "mlp", **overrides)).train()
    records = read_manifest(args.manifest)[: args.batch_size * (args.steps + 2)]
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
        for step in range(args.steps + 2):
            indices = list(range(step * args.batch_size, (step + 1) * args.batch_size))
            for name, batcher in batchers.items():
                begin = time.perf_counter()
                loss = model(**batcher.collate(indices)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step >= 2:  # warm-up steps are not measured
                    times[name].append(time.perf_counter() - begin)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["recompute"] / medians["cache"]
    result = {
        "preset": args.preset,
        "encoder": args.encoder or "preset default",
        "llm": args.llm,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "median_step_seconds": {k: round(v, 4) for k, v in medians.items()},
        "speedup": round(ratio, 2),
        "cache_fill_seconds": round(fill_seconds, 2),
        "cache_fill_clips": len(records),
    }
    print(json.dumps(result, indent=1))
    print(f"adapter-only step: recompute encoder {medians['recompute'] * 1000:.0f} ms, from cache "
          f"{medians['cache'] * 1000:.0f} ms -> {ratio:.2f}x faster from the cache")  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
