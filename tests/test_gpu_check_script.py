"""scripts/gpu_check.sh is ready for a GPU machine: valid bash, every step in its dry run, and its training check
runs end to end (on the CPU here, a few steps)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_the_script_is_valid_bash_and_its_dry_run_lists_every_step(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    expected = [
        "nvidia-smi -L",
        "-m pytest -m cuda tests/test_cuda.py",
        "bench adapter --device cuda --dtype bfloat16 --no-hf",
        f"--json {tmp_path / 'out'}/bench-adapter-cuda.json",
        f"scripts/gpu_train_check.py {tmp_path / 'out'}/train --steps 300",
    ]
    for fragment in expected:
        assert any(fragment in step for step in steps), f"{fragment!r} not in the dry run:\n{proc.stdout}"
    assert not (tmp_path / "out").exists()  # a dry run runs nothing


def test_the_training_check_runs_a_few_steps_on_the_cpu(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_train_check.py"), str(tmp_path), "--steps", "3", "--allow-cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gpu_train_check: CPU" in proc.stdout and "3 steps in" in proc.stdout
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_without_a_gpu_the_training_check_says_so() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import torch; torch.cuda.is_available = lambda: False; import runpy, sys; "
         f"sys.argv = ['x', 'out']; runpy.run_path({str(ROOT / 'scripts' / 'gpu_train_check.py')!r}, "
         "run_name='__main__')"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "no CUDA GPU visible" in proc.stderr
