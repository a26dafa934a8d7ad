"""DDP: 2 gloo processes (launched by torchrun) give the same losses as 1 process with the doubled batch.

Run as a script this file is the torchrun worker; under pytest it is the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audiomoe.training.config import load_train_config
from audiomoe.training.distributed import DistEnv, shutdown
from audiomoe.training.stream import BatchStream
from audiomoe.training.trainer import Trainer, seed_everything
from toy_distributed import Toy, X, Y, free_port

PER_RANK = 4


def run(out: str, world: int, rank: int, strategy: str) -> None:
    """Global batch = PER_RANK * 2 rows; each of ``world`` ranks takes its contiguous share."""
    share = PER_RANK * 2 // world

    def plan(epoch: int) -> list[list[int]]:
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch)).tolist()
        batches = [order[i : i + PER_RANK * 2] for i in range(0, len(order), PER_RANK * 2)]
        return [b[rank * share : (rank + 1) * share] for b in batches]

    overrides = [
        f"out_dir={out}",
        "steps=6",
        "progress=false",
        "checkpoint_every=3",
        f"strategy={strategy}",
        "precision=fp32",
    ]
    config = load_train_config(None, [*overrides, "schedule.warmup_steps=2", "optim.lr=0.05"])
    seed_everything(0)
    trainer = Trainer(config, Toy(), BatchStream(plan, lambda i: {"x": X[list(i)], "y": Y[list(i)]}))
    trainer.fit()
    env = trainer.env
    del trainer
    shutdown(env)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_with_doubled_batch(tmp_path: Path, strategy: str) -> None:
    single = tmp_path / "single"
    run(str(single), world=1, rank=0, strategy=strategy)
    multi = tmp_path / "multi"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        __file__,
        str(multi),
        strategy,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    one, two = losses(single), losses(multi)
    assert len(one) == len(two) == 6
    assert one[-1] < one[0]
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    # the checkpoint of the 2-process run holds one RNG file per rank
    assert sorted(p.name for p in (multi / "checkpoints" / "step_0000006").glob("rng_rank*.pt")) == [
        "rng_rank0.pt",
        "rng_rank1.pt",
    ]


if __name__ == "__main__":
    environment = DistEnv.from_env()
    run(sys.argv[1], world=environment.world_size, rank=environment.rank, strategy=sys.argv[2])
