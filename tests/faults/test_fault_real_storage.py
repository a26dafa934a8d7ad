"""Real storage faults where the machine allows them: a full 40 MiB tmpfs and a read-only one, each mounted in a
private mount namespace (``unshare -rm``), so nothing is left mounted. Skipped where namespaces or tmpfs mounts
are not permitted; the patched-writer cases of ``test_fault_cases.py`` cover the same paths everywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TALLY, Outcome, classify, train_argv


def can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not can_mount(), reason="no private mount namespaces / tmpfs mounts here")


def on_tmpfs(folder: Path, size: str, argv: list[str], then: str = "") -> Outcome:
    """``audiomoe ARGV`` in a new process for which ``folder`` is a fresh tmpfs of ``size``, in a private mount
    namespace; ``then`` is shell run after the mount (before the command); the exit code is the command's, and
    stdout ends with a listing of ``folder/run/checkpoints``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = (
        f'mount -t tmpfs -o size={size} tmpfs "$0" && {then or "true"} && "$@"; code=$?; '
        'ls -a "$0/run/checkpoints" 2>/dev/null; exit $code'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), sys.executable, "-m", "audiomoe.cli.main", *argv],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)


def test_a_full_disk_during_the_second_checkpoint(corpus: Path, tmp_path: Path) -> None:
    # one tiny checkpoint (weights + AdamW state) is about 26 MiB: the step-2 one fits, the step-4 one does not
    disk = tmp_path / "disk"
    outcome = on_tmpfs(disk, "40m", train_argv(corpus, disk / "run", "data.dev=[]"))
    left = set(outcome.out.split())
    kind = classify(
        outcome, 3, r"cannot write the step-4 checkpoint to .*: No space left on device \(\d+\.\d MiB free\); free",
        check_ok="step_0000002" in left and not any(name.startswith(".tmp-") for name in left),
    )  # fmt: skip
    TALLY["cases"] += 1
    TALLY[kind] += 1
    assert kind == "clear error", (outcome.code, outcome.out[-2000:], outcome.err[-2000:])


def test_a_read_only_output_folder(corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    outcome = on_tmpfs(folder, "4m", train_argv(corpus, folder / "run", "data.dev=[]"),
                       then='mkdir "$0/run" && mount -o remount,ro "$0"')  # fmt: skip
    kind = classify(outcome, 3, r"cannot write the run's logs to .*: Read-only file system")
    TALLY["cases"] += 1
    TALLY[kind] += 1
    assert kind == "clear error", (outcome.code, outcome.out[-2000:], outcome.err[-2000:])
