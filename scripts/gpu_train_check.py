"""A few hundred LALM training steps on the GPU with bf16 autocast: the ``whisper-tiny-en-random`` preset (Whisper
tiny.en's size, random weights: nothing to download) with the MoE-Adapter, on synthetic tone clips written here.

    python scripts/gpu_train_check.py OUT [--steps 300]

Prints the first and last loss and the steps per second; exits 1 if a value was not finite or the loss did not
fall (runs of 50 steps or more). Used by scripts/gpu_check.sh."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiomoe.training.config import load_train_config
from audiomoe.training.run import train

LABELS = ["low", "normal", "high"]  # the built-in pitch task's labels


def write_clips(root: Path, count: int = 96) -> Path:
    """Tones whose pitch band is the answer: a task the adapter can learn in a few hundred steps."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        label = LABELS[i % 3]
        freq = {"low": 220, "normal": 660, "high": 1760}[label] * rng.uniform(0.9, 1.1)
        seconds = rng.uniform(1.0, 3.0)
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(root / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
        lines.append(json.dumps({"key": f"c{i}", "audio": f"c{i}.wav", "duration": seconds, "task": "pitch",
                                 "instruction": "Is the voice pitch low, normal or high?", "answer": label}))  # fmt: skip
    manifest = root / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU when no GPU is there (tests)"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_train_check: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    manifest = write_clips(args.out / "clips")
    config = load_train_config(
        None,
        [
            f"data.train=[{manifest}]", "data.batch_size=16", f"steps={args.steps}", "progress=false",
            f"out_dir={args.out / 'run'}", "model.preset=whisper-tiny-en-random",
            "precision=bf16" if torch.cuda.is_available() else "precision=auto",
            "model.adapter={type: moe, num_experts: 8, top_k: 2}", "optim.lr=1e-3", "log_every=10",
            "tensorboard=false",
        ],
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    print(
        f"gpu_train_check: {device}, {result.summary.get('precision', '?')}, {args.steps} steps in {seconds:.1f} s "
        f"({args.steps / seconds:.1f} steps/s incl. start-up), loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"peak {peak:.2f} GiB"
    )
    # a falling loss is asked of a real run only: a handful of steps (the CPU test) may not show it yet
    ok = all(math.isfinite(v) for v in losses) and (losses[-1] < losses[0] or args.steps < 50)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
