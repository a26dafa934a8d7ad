"""The toy training run the kill-and-resume test SIGKILLs: ``run(out_dir, steps, seconds_per_batch)``.

Started from a forkserver that has imported torch and the trainer once, so ten restarts cost forks, not imports.
Always resumes (a run without a checkpoint starts from step 0) and checkpoints every step, so kills land inside
checkpoint writes as well as inside steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the toy model of test_train

from audiomoe.training import checkpoint as ckpt  # noqa: E402
from audiomoe.training.config import load_train_config  # noqa: E402
from audiomoe.training.trainer import Trainer, seed_everything  # noqa: E402
from test_train import ToyModel, toy_stream  # noqa: E402


def run(out: str, steps: int, pause: float) -> None:
    torch.set_num_threads(1)
    # fsync guards against power loss, not process death (the page cache survives a SIGKILL); on a shared
    # disk it costs tens of ms per checkpoint, which would make 400 checkpoints the slowest part of the suite
    ckpt._fsync_file = ckpt._fsync_dir = lambda path: None
    config = load_train_config(
        None,
        [f"out_dir={out}", f"steps={steps}", "grad_accum=1", "progress=false", "checkpoint_every=1",
         "keep_last=2", "tensorboard=false", "precision=fp32", "schedule.warmup_steps=3"],
    )  # fmt: skip
    stream = toy_stream()
    collate = stream.collate

    def slow_collate(indices):
        time.sleep(pause)  # stands in for data loading, so a kill lands at a random point of the run
        return collate(indices)

    stream.collate = slow_collate
    seed_everything(config.seed)
    Trainer(config, ToyModel(), stream).fit(resume=True)
