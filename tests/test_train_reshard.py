"""Resume on another number of processes: a run saved by 2 gloo ranks continues with 1 and with 2 and gives the
losses of the uninterrupted run (sharded DCP checkpoints under FSDP2, full checkpoints under DDP).

Run as a script this file is the torchrun worker; under pytest it is the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audiomoe.config import ConfigError
from audiomoe.training import checkpoint as ckpt
from audiomoe.training.config import load_train_config
from audiomoe.training.distributed import DistEnv, shutdown
from audiomoe.training.fingerprint import ResumeMismatch
from audiomoe.training.stream import BatchStream
from audiomoe.training.trainer import Trainer, seed_everything
from toy_distributed import Toy, X, Y, free_port

MICRO = 4  # rows per micro-batch


def run(out: str, strategy: str, fmt: str, grad_accum: int, resume: bool) -> None:
    """The sampler's contract: one global list of micro-batches per epoch, rank r of W takes every W-th."""
    env = DistEnv.from_env()

    def plan(epoch: int) -> list[list[int]]:
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch)).tolist()
        batches = [order[i : i + MICRO] for i in range(0, len(order), MICRO)]
        return batches[env.rank :: env.world_size]

    overrides = [
        f"out_dir={out}",
        "steps=6",
        "progress=false",
        "checkpoint_every=3",
        f"strategy={strategy}",
        f"checkpoint_format={fmt}",
        f"grad_accum={grad_accum}",
        "precision=fp32",
        "keep_last=5",
        "schedule.warmup_steps=2",
        "optim.lr=0.05",
    ]
    config = load_train_config(None, overrides)
    seed_everything(0)
    trainer = Trainer(config, Toy(aux=0.0), BatchStream(plan, lambda i: {"x": X[list(i)], "y": Y[list(i)]}))
    trainer.fit(resume=resume)
    del trainer
    shutdown(env)


def launch(*args: str) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", __file__, *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def cut_at_step_3(full: Path, to: Path) -> Path:
    """A copy of the finished run as it stood when step 3 was saved."""
    shutil.copytree(full, to)
    shutil.rmtree(to / "checkpoints" / "step_0000006")
    return to


@pytest.mark.parametrize(("strategy", "fmt"), [("fsdp", "sharded"), ("ddp", "full")])
def test_a_two_process_checkpoint_resumes_on_one_and_on_two(tmp_path: Path, strategy: str, fmt: str) -> None:
    whole = tmp_path / "whole"
    launch(str(whole), strategy, fmt, "1")
    reference = losses(whole)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6] and reference[6] < reference[1]
    step3 = whole / "checkpoints" / "step_0000003"
    if fmt == "sharded":  # every rank wrote its own shards, no gathered weights
        assert (step3 / "model.dcp" / ".metadata").is_file() and not (step3 / "model.safetensors").exists()
        assert len(list((step3 / "model.dcp").glob("*.distcp"))) == 2

    # 1 process with grad_accum 2: each step takes the same two micro-batches the two ranks took
    one = cut_at_step_3(whole, tmp_path / "one")
    run(str(one), strategy, fmt, grad_accum=2, resume=True)
    two = cut_at_step_3(whole, tmp_path / "two")
    launch(str(two), strategy, fmt, "1", "--resume")
    for resumed in (one, two):
        got = losses(resumed)
        assert sorted(got) == [1, 2, 3, 4, 5, 6]
        assert [got[s] for s in (4, 5, 6)] == pytest.approx(
            [reference[s] for s in (4, 5, 6)], rel=1e-5, abs=1e-6
        )
    if (
        fmt == "sharded"
    ):  # how rank 0 exports an FSDP run: the shards read into one whole model, no process group
        final = [Toy(aux=0.0), Toy(aux=0.0)]
        for model, run_dir in zip(final, (whole, one), strict=True):
            ckpt.load_sharded_model(run_dir / "checkpoints" / "step_0000006", model)
        for a, b in zip(final[0].parameters(), final[1].parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_another_number_of_processes_with_another_step_size_is_refused(tmp_path: Path) -> None:
    run(
        str(tmp_path / "r"), "ddp", "sharded", grad_accum=2, resume=False
    )  # 1 process: 2 micro-batches a step
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step_0000006")
    with pytest.raises(ResumeMismatch, match=r"grad_accum: 2 -> 1.*processes x grad_accum stays 2"):
        run(str(tmp_path / "r"), "ddp", "sharded", grad_accum=1, resume=True)


def test_a_position_the_processes_cannot_share_is_refused(tmp_path: Path) -> None:
    run(str(tmp_path / "r"), "ddp", "full", grad_accum=1, resume=False)
    step3 = tmp_path / "r" / "checkpoints" / "step_0000003"
    state = ckpt.load_object(step3 / ckpt.TRAINER_FILE)
    trainer = Trainer.__new__(Trainer)
    trainer.env, trainer.stream = DistEnv(rank=0, world_size=2), BatchStream(lambda e: [], lambda i: i)
    trainer.config = load_train_config(None, [f"out_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError, match="3 batches into its epoch, which 2 processes cannot share"):
        trainer._stream_state(step3, state, saved_world=1)


if __name__ == "__main__":
    out, strategy, fmt, accum = sys.argv[1:5]
    run(out, strategy, fmt, int(accum), resume="--resume" in sys.argv)
