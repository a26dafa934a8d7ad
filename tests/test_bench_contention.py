"""``audiomoe bench contention``: the summary arithmetic on a fake measurement, the arms' environments, and one
worker end to end (its timings are not tested)."""

from __future__ import annotations

import pytest

from audiomoe import runtime
from audiomoe.benchmarks import contention


def test_summary_takes_medians_and_ratios() -> None:
    raw = {
        "default": {"threads": 1, "precision": "fp32", "omp_wait_policy": None,
                    "quiet": [4.0, 5.0, 9.0], "loaded": [4.0, 1.0, 3.0]},
        "spin-2": {"threads": 2, "precision": "fp32", "omp_wait_policy": None,
                   "quiet": [10.0, 12.0, 8.0], "loaded": [0.5, 1.0, 1.5]},
    }  # fmt: skip
    arms = contention.summarize(raw)["arms"]
    assert arms["default"]["quiet_steps_per_s"] == 5.0 and arms["default"]["loaded_steps_per_s"] == 3.0
    assert arms["default"]["loaded_over_quiet"] == 0.6
    assert arms["spin-2"]["loaded_over_quiet"] == pytest.approx(1.0 / 10.0)
    assert arms["spin-2"]["quiet_over_default"] == 2.0 and arms["spin-2"]["loaded_over_default"] == 0.333
    assert arms["default"]["quiet_all"] == [4.0, 5.0, 9.0] and arms["default"]["threads"] == 1

    result = {
        "arms": arms,
        "machine": {"cpu_model": "Test CPU", "cpu_id": "", "cpu_capability": "AVX2", "cpu_bf16_features": [],
                    "usable_cores": 2, "torch": "x"},
        "settings": {"preset": "tiny"},
        "seconds": 1.0,
    }  # fmt: skip
    table = contention.format_report(result)
    assert "| default | 1 | fp32 | unset | 5.00 | 3.00 | 0.60 |" in table
    assert "| spin-2 | 2 | fp32 | unset |" in table and "Test CPU" in table and "capability AVX2" in table


def test_arms_set_and_clear_their_environment() -> None:
    default, spin = contention.default_arms()
    base = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "5", runtime.THREADS_ENV: "7", "HOME": "/h"}
    assert default.environ(base) == spin.environ(base) == {"HOME": "/h"}
    assert default.threads == "auto" and spin.threads == str(runtime.usable_cores())
    custom = contention.Arm("x", {"A": "1", "HOME": None}).environ(base)
    assert custom == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "5", runtime.THREADS_ENV: "7", "A": "1"}


def test_one_worker_runs_end_to_end() -> None:
    arm = contention.Arm("one", {runtime.THREADS_ENV: "1", runtime.BF16_ENV: "0"}, "auto")
    result = contention.run_benchmark(steps=1, repeats=1, phase_seconds=0.1, arms=[arm])
    (summary,) = result["arms"].values()
    assert summary["threads"] == 1 and summary["precision"] == "fp32"
    assert summary["quiet_steps_per_s"] > 0 and summary["loaded_steps_per_s"] > 0
    assert len(summary["quiet_all"]) == len(summary["loaded_all"]) == 1
    assert result["machine"]["cpu_capability"] and "loaded_over_quiet" in contention.format_report(result)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="--steps"):
        contention.run_benchmark(steps=0)
