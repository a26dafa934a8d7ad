"""Data loading in DataLoader workers (``audiomoe bench data``): clips/s of decoding + feature extraction with
0, 1 and 2 worker processes, and how much of the loading a training step hides, in the same run.

    audiomoe bench data [--clips 48] [--batch-size 8] [--workers 0 1 2] [--steps 6] [--manifest M]

Without ``--manifest`` the benchmark writes its own clips to a temporary folder: 1-3 s tones with noise as 44.1
kHz stereo FLAC, so each clip costs what real recordings cost (FLAC decode, mix to mono, soxr resampling to
16 kHz, log-mel features). Loading: one pass over the same batch plan per worker count (after one warm-up
batch in this process), worker start-up included, as a training epoch pays it; and once more in this process with one torch thread, as each worker
runs, which separates the thread setting from the parallelism. Training: ``steps`` optimizer steps of the tiny LALM fed by the stream
with 0 workers and with the most workers, and the same steps on batches loaded beforehand (compute only);
``hidden`` is the share of the loading time per step that the workers take off the step
(``(step_0 - step_w) / (step_0 - compute)``). Ratios are of this run's own measurements.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from audiomoe.data.manifest import AudioRecord, read_manifest
from audiomoe.data.sampler import BucketBatchSampler
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.loading import LoaderStream, decode_batch, fill_durations

SOURCE_RATE = 44100


def write_clips(folder: Path, count: int, seed: int = 0) -> list[AudioRecord]:
    """``count`` stereo 44.1 kHz FLAC tones with noise, 1-3 s long, as records of the ``transcribe`` task."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        seconds = float(rng.uniform(1.0, 3.0))
        t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t)
        wave = np.stack([tone, tone], axis=1) + 0.02 * rng.standard_normal((t.size, 2))
        path = folder / f"clip{i:04d}.flac"
        sf.write(path, wave.astype(np.float32), SOURCE_RATE)
        records.append(AudioRecord(f"clip{i}", str(path), "transcribe", "Transcribe the speech.", "a tone"))
    return records


def _train_steps(model: Any, optimizer: Any, batches: Any, steps: int) -> list[float]:
    """Wall seconds of each optimizer step, waiting for its batch included."""
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        loss = model(**next(batches)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - begin)
    return times


def run_benchmark(
    clips: int = 32, batch_size: int = 8, workers: Sequence[int] = (0, 1, 2), steps: int = 4,
    preset: str = "tiny", manifest: str = "",
) -> dict[str, Any]:  # fmt: skip
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset(preset, "linear")).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        records = read_manifest(manifest)[:clips] if manifest else write_clips(Path(tmp), clips)
        fill_durations(records)
        batcher = RecordBatcher(records, model.processor)
        plan = BucketBatchSampler([r.duration or 0.0 for r in records], batch_size, seed=0).batches
        load = partial(decode_batch, batcher)
        load(plan(0)[0])  # warm-up: first-call costs of the feature extractor and tokenizer
        loading: dict[int, float] = {}
        for count in workers:
            stream = LoaderStream(plan, load, count)
            begin = time.perf_counter()
            for _ in plan(0):
                next(stream)
            loading[count] = len(records) / (time.perf_counter() - begin)
        # workers run one torch thread each; the same in this process separates that from the parallelism
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        begin = time.perf_counter()
        for batch in plan(0):
            load(batch)
        single_thread = len(records) / (time.perf_counter() - begin)
        torch.set_num_threads(threads)
        most = max(workers)
        _train_steps(model, optimizer, LoaderStream(plan, load, 0), 1)  # warm-up: first-call costs
        step = {
            count: statistics.median(_train_steps(model, optimizer, LoaderStream(plan, load, count), steps))
            for count in sorted({0, most})
        }
        ready = [load(b)[0] for b in plan(0)[:steps]]
        compute = statistics.median(_train_steps(model, optimizer, iter(ready * 2), steps))
    loading_time = step[0] - compute
    return {
        "clips": len(records),
        "batch_size": batch_size,
        "source": manifest or "generated 44.1 kHz stereo FLAC, 1-3 s",
        "cpu_cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "clips_per_second": {str(k): round(v, 1) for k, v in loading.items()},
        "clips_per_second_in_process_one_thread": round(single_thread, 1),
        "speedup": {str(k): round(v / loading[workers[0]], 2) for k, v in loading.items()},
        "median_step_seconds": {f"{k} workers": round(v, 4) for k, v in step.items()} | {"compute only": round(compute, 4)},
        "hidden": round((step[0] - step[most]) / loading_time, 2) if loading_time > 0 and most else None,
    }  # fmt: skip


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"data loading: {result['clips']} clips ({result['source']}), batches of {result['batch_size']}, "
        f"{result['threads']} torch threads in the main process",
        "",
        "| workers | clips/s | speed-up |",
        "|---|---|---|",
    ]
    for count, rate in result["clips_per_second"].items():
        lines.append(f"| {count} | {rate} | {result['speedup'][count]}x |")
    one = result["clips_per_second_in_process_one_thread"]
    base = next(iter(result["clips_per_second"].values()))
    lines.append(f"| 0, one torch thread (as a worker runs) | {one} | {one / base:.2f}x |")
    lines += ["", "| training step (median) | seconds |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in result["median_step_seconds"].items()]
    hidden = result["hidden"]
    if hidden is not None and hidden > 1:
        lines += ["", f"workers hide all of the loading time per step (measured {100 * hidden:.0f}%: the step with "
                  "workers ran faster than compute alone, i.e. step times vary more than loading costs here)"]  # fmt: skip
    elif hidden is not None and hidden > 0:
        lines += ["", f"workers hide {100 * hidden:.0f}% of the loading time per step"]
    elif hidden is not None:
        lines += ["", f"workers hide none of the loading time here ({100 * hidden:.0f}%): with "
                  f"{result['cpu_cores']} usable cores they compete with the training threads"]  # fmt: skip
    return "\n".join(lines)
