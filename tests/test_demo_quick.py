"""``audiomoe demo --quick`` runs the whole pipeline over three seeds and reports every arm on every task group
with intervals, paired differences against the MoE and verdicts generated from them."""

from __future__ import annotations

import json
from pathlib import Path

from audiomoe.cli.main import main as cli
from audiomoe.data.tasks import TASK_GROUPS


def test_demo_quick_reports_seeds_intervals_and_paired_differences(tmp_path: Path) -> None:
    assert cli(["demo", "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scale"] == "toy" and report["seeds"] == [0, 1, 2]
    arms = report["arms"]
    assert set(arms) == {"linear", "mlp", "moe", "dense-twin"}
    # matched parameters: mlp has the MoE's active parameters, the dense twin its total (within 2%)
    assert (
        abs(arms["mlp"]["params_active"] - arms["moe"]["params_active"])
        <= 0.02 * arms["moe"]["params_active"]
    )
    assert (
        abs(arms["dense-twin"]["params_total"] - arms["moe"]["params_total"])
        <= 0.02 * arms["moe"]["params_total"]
    )
    assert arms["moe"]["params_active"] < arms["moe"]["params_total"]
    for name in arms:
        for seed in (0, 1, 2):
            evaluated = json.loads((tmp_path / "runs" / name / f"seed-{seed}" / "eval.json").read_text())
            assert evaluated["arm"] == name and evaluated["seed"] == seed and evaluated["items"]

    comparison = report["comparison"]
    assert comparison["reference"] == "moe" and set(comparison["differences"]) == {
        "linear",
        "mlp",
        "dense-twin",
    }
    for name, arm in comparison["arms"].items():
        assert len(arm["seeds"]) == 3, name
        assert set(arm["groups"]) == set(TASK_GROUPS), name
        for group in arm["groups"].values():
            assert group["low"] <= group["mean"] <= group["high"]
    for other, diff in comparison["differences"].items():
        for scope in ("groups", "overall"):
            for name, d in diff[scope].items():
                assert d["low"] <= d["difference"] <= d["high"] and 0.0 < d["p"] <= 1.0, (other, name)
                assert d["detectable"] >= 0.0
    # a verdict per (dense arm, group) and overall, each "better"/"worse" only where the interval excludes 0
    assert len(comparison["verdicts"]) == 3 * (len(TASK_GROUPS) + 1)
    for v in comparison["verdicts"]:
        scope = {"group": "groups", "overall": "overall"}[v["scope"]]
        d = comparison["differences"][v["arm"]][scope][v["name"]]
        excludes_zero = d["low"] > 0 or d["high"] < 0
        assert (v["direction"] != "none") == excludes_zero, v

    markdown = (tmp_path / "report.md").read_text()
    assert "Toy scale, 3 seeds" in markdown and "smoke test" in markdown
    assert "![forest plot](forest.png)" in markdown and (tmp_path / "forest.png").stat().st_size > 5000
    assert "Are the arms competent?" in markdown and "Machine:" in markdown
    assert report["precision"] in ("fp32", "bf16") and report["machine"]["cpu_capability"]

    # analysis of the seed-0 arms: conflict ratios, MoE NMI against its shuffled-label chance, plots on disk
    analysis = report["analysis"]
    assert set(analysis["conflict_ratio"]) == set(arms)
    assert set(analysis["nmi"]) == {"moe"}  # only the MoE routes
    assert {"category", "task", "task_group"} <= set(analysis["nmi"]["moe"])
    for path in analysis["plots"].values():
        assert path.startswith("analysis/") and (tmp_path / path).stat().st_size > 1000, path
        assert f"]({path})" in markdown

    # --resume keeps every finished (arm, seed) run of the same settings, whatever else is selected
    eval_file = tmp_path / "runs" / "moe" / "seed-1" / "eval.json"
    before = eval_file.stat().st_mtime_ns
    assert (
        cli(["demo", "--out", str(tmp_path), "--quick", "--resume", "arms=[linear,moe]", "analyse=false"])
        == 0
    )
    resumed = json.loads((tmp_path / "report.json").read_text())
    assert resumed["reused_runs"] == 6 and set(resumed["arms"]) == {"linear", "moe"}
    assert eval_file.stat().st_mtime_ns == before
    means = {g: v["mean"] for g, v in comparison["arms"]["moe"]["groups"].items()}
    assert {g: v["mean"] for g, v in resumed["comparison"]["arms"]["moe"]["groups"].items()} == means
