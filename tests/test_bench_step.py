"""`audiomoe bench step` on the tiny preset at minimal sizes: the JSON's structure, shares summing to 1, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiomoe.benchmarks.step import PHASES, _model, format_report, run_benchmark, write_plots


def _tiny_model():
    return _model("tiny", {})


def test_step_breakdown_and_curves(tmp_path: Path) -> None:
    result = run_benchmark(
        "tiny",
        steps=1,
        batch_size=1,
        seconds=2.0,
        clip_seconds=(2, 4),
        batches=(1, 2),
        experts=(2, 4),
        top_ks=(1, 2),
    )
    assert set(result["phases_s"]) == set(PHASES) and all(v > 0 for v in result["phases_s"].values())
    assert sum(result["shares"].values()) == pytest.approx(1.0)
    assert result["step_s"] == pytest.approx(sum(result["phases_s"].values()))
    assert {k: [p[0] for p in v] for k, v in result["curves"].items()} == {
        "clip_seconds": [2, 4], "batch_size": [1, 2], "num_experts": [2, 4], "top_k": [1, 2],
    }  # fmt: skip
    ab = result["optimizer_ab"]  # the AdamW implementations timed over the model's trainable parameters
    assert set(ab["median_s"]) == {"for_loop", "foreach", "fused"} and all(
        v > 0 for v in ab["median_s"].values()
    )
    assert ab["over_for_loop"]["for_loop"] == 1.0 and ab["auto"] == "fused"
    assert ab["params"] == sum(p.numel() for p in _tiny_model().parameters() if p.requires_grad)
    assert "AdamW step over" in format_report(result)
    loss = result["loss_ab"]  # supervised-positions logits against all positions, both timed
    assert set(loss["llm_forward_backward_s"]) == {"supervised", "all_positions"}
    assert all(v > 0 for v in loss["llm_forward_backward_s"].values()) and loss["supervised_over_all"] > 0
    assert "supervised positions only" in format_report(result)
    paths = write_plots(result, tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "step_vs_batch_size.png", "step_vs_clip_seconds.png", "step_vs_num_experts.png", "step_vs_top_k.png",
    ]  # fmt: skip
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert json.loads((tmp_path / "out" / "step.json").read_text())["shares"] == result["shares"]
