"""The adapter benchmark runs end to end on a tiny shape and reports both ratios, TFLOP/s and its machine
(timing itself is not tested)."""

import json
from pathlib import Path

import pytest
import torch

from audiomoe.benchmarks import adapter_speed
from audiomoe.benchmarks.adapter_speed import (
    ArmResult,
    Shape,
    arm_flops,
    bench_shape,
    format_table,
    median_interval,
    ratios_with_intervals,
    round_inputs,
)
from audiomoe.cli.main import main as cli

TINY = Shape(
    "tiny",
    tokens=64,
    input_dim=32,
    output_dim=32,
    num_experts=4,
    top_k=2,
    expert_hidden_dim=16,
    shared_hidden_dim=16,
)


def test_adapter_benchmark_reports_ratios_on_a_tiny_shape():
    result = bench_shape(TINY, repeats=1, warmup=0)
    assert {"moe", "moe-loop", "dense", "hf-eager"} <= set(result["arms"])
    for key in ("moe_over_dense", "moe_over_hf_best", "moe_tflops_share_of_dense"):
        assert result[key]["forward"] > 0 and result[key]["forward_backward"] > 0
    assert all(a["tflops"]["forward"] > 0 for a in result["arms"].values())
    for key in ("moe_over_dense", "moe_over_hf_best"):
        for mode in ("forward", "forward_backward"):
            low, high = result[key][f"{mode}_interval"]
            assert low == high == pytest.approx(result[key][mode])  # one round: its ratio is the median's
    table = format_table({"shapes": {"tiny": result}})
    assert "moe_over_hf_best" in table and "| tiny | moe |" in table
    ratio = result["moe_over_dense"]["forward"]
    assert f"| tiny | {ratio:.2f} [{ratio:.2f}, {ratio:.2f}] |" in table


def test_non_square_shapes_have_no_transformers_arm():
    shape = Shape(
        "rect", tokens=32, input_dim=32, output_dim=24, num_experts=4, top_k=2, expert_hidden_dim=16,
        shared_hidden_dim=16,
    )  # fmt: skip
    result = bench_shape(shape, repeats=1, warmup=0)
    assert "moe_over_hf_best" not in result and not any(a.startswith("hf-") for a in result["arms"])


def test_every_round_gets_a_new_input_the_same_for_a_seed():
    first, again = round_inputs(TINY, 3, torch.float32), round_inputs(TINY, 3, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert first[0].shape == (64, 32)


def test_flops_are_the_active_swiglu_plus_router_and_shared_gate():
    # active width 2*16 + 16 = 48: gate+up 32 x 96, down 48 x 32, per token 2 FLOPs per weight
    dense = 2 * 64 * (32 * 96 + 48 * 32)
    assert arm_flops(TINY, "dense") == {"forward": dense, "forward_backward": 3 * dense}
    moe = dense + 2 * 64 * 32 * (4 + 1)  # router over 4 experts + the shared gate (square shape)
    assert arm_flops(TINY, "moe")["forward"] == moe == arm_flops(TINY, "hf-grouped_mm")["forward"]


def test_the_cli_writes_both_ratios_and_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(adapter_speed, "SHAPES", [TINY])
    out = tmp_path / "bench.json"
    assert cli(["bench", "adapter", "--repeats", "1", "--dtype", "float32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"] and result["device"] == "cpu" and result["dtype"] == "float32"
    tiny = result["shapes"]["tiny"]
    assert tiny["moe_over_dense"]["forward"] > 0 and tiny["moe_over_hf_best"]["forward_backward"] > 0
    assert result["auto_kernel_choices"] and {c["kernel"] for c in result["auto_kernel_choices"]} <= {
        "loop", "grouped_mm"
    }  # fmt: skip
    assert "expert kernel auto ->" in capsys.readouterr().out


def test_cuda_without_a_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli(["bench", "adapter", "--device", "cuda", "--shape", "cpu-small"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "Traceback" not in err


def test_the_median_interval_takes_the_order_statistics_its_coverage_allows():
    # coverage 1 - 2 P(Binomial(n, 1/2) < k): n = 7 -> k = 1 (98.4%; k = 2 would be 87.5%), n = 11 -> k = 3
    assert median_interval([7, 1, 3, 5, 2, 6, 4]) == (1, 7, 1 - 2 / 128)
    low, high, coverage = median_interval(list(range(11)))
    assert (low, high) == (2, 8) and coverage == pytest.approx(1 - 2 * (1 + 11 + 55) / 2048)
    assert median_interval([1.5]) == (1.5, 1.5, 0.0)  # one round: no interval worth the name, and it says so


def test_paired_ratios_come_from_the_same_rounds():
    # a slow round slows both arms: its paired ratio stays 2, while the medians' ratio alone would not show it
    moe = ArmResult(
        0, 0, forward_all_ms=[2, 20, 2, 2, 2, 2, 2], forward_backward_all_ms=[4, 4, 4, 4, 4, 4, 6]
    )
    dense = ArmResult(
        0, 0, forward_all_ms=[1, 10, 1, 1, 1, 1, 1], forward_backward_all_ms=[2, 2, 2, 2, 2, 2, 2]
    )
    moe.forward_ms, moe.forward_backward_ms, dense.forward_ms, dense.forward_backward_ms = (
        2,
        4,
        1,
        2,
    )  # medians
    ratio = ratios_with_intervals(moe, dense, dense)
    assert ratio["forward"] == 2 and ratio["forward_backward"] == 2
    assert ratio["forward_interval"] == [2, 2] and ratio["forward_backward_interval"] == [2, 3]
    assert ratio["interval_coverage"] == 1 - 2 / 128
