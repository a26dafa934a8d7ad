"""SIGKILL at random moments (inside steps and inside checkpoint writes), then resume: the loss curve is
bit-identical to an uninterrupted run, and no kill ever leaves a checkpoint that does not verify."""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from pathlib import Path

import kill_driver
from conftest import TALLY

from audiomoe.training import checkpoint as ckpt

STEPS = 40
PAUSE = 0.01  # seconds per batch
KILLS = 10


def curve(out: Path) -> list[tuple[int, float, float, float]]:
    if not (out / "metrics.jsonl").exists():
        return []
    rows = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.endswith("}")
    ]
    return [(r["step"], r["loss"], r["aux_loss"], r["lr"]) for r in rows if "loss" in r]


def test_random_kills_resume_to_identical_losses(tmp_path: Path) -> None:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "audiomoe.training.trainer", "kill_driver"])

    def start(out: Path) -> multiprocessing.process.BaseProcess:
        proc = context.Process(target=kill_driver.run, args=(str(out), STEPS, PAUSE))
        proc.start()
        return proc

    reference = tmp_path / "reference"
    proc = start(reference)
    proc.join(120)
    assert proc.exitcode == 0
    expected = curve(reference)
    assert [r[0] for r in expected] == list(range(1, STEPS + 1))

    run = tmp_path / "killed"
    rng = random.Random(11)
    resumed_from = []
    for _ in range(KILLS):
        before = len(curve(run))
        proc = start(run)
        # wait until this process has logged 1-3 new steps, then kill at a random moment of what follows
        target, deadline = before + rng.randint(1, 3), time.monotonic() + 60
        while len(curve(run)) < target and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 2 * PAUSE))
        assert proc.is_alive(), "the run finished before the kill: make it longer"
        proc.kill()  # SIGKILL
        proc.join(30)
        # whatever the kill interrupted, every visible checkpoint verifies (half-written ones stay invisible)
        path, _, skipped = ckpt.resumable_checkpoint(run / "checkpoints")
        assert skipped == [] and path is not None
        resumed_from.append(int(path.name.split("_")[1]))
    proc = start(run)
    proc.join(120)
    assert proc.exitcode == 0
    assert curve(run) == expected  # loss, aux loss and LR bit-identical at every step
    assert resumed_from == sorted(resumed_from) and resumed_from[-1] >= KILLS  # each life advanced the run
    TALLY["kills"] += KILLS
    TALLY["cases"] += 1
    TALLY["ok"] += 1
