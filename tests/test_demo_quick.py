"""``audiomoe demo --quick`` runs the whole pipeline and reports every arm on every task group."""

from __future__ import annotations

import json
from pathlib import Path

from audiomoe.cli.main import main as cli
from audiomoe.data.tasks import TASK_GROUPS


def test_demo_quick_reports_all_adapters_and_task_groups(tmp_path: Path) -> None:
    assert cli(["demo", "--out", str(tmp_path), "--quick"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scale"] == "toy" and report["seeds"] == [0]
    assert {"linear", "mlp", "moe", "dense-twin"} <= set(report["arms"])
    for name, arm in report["arms"].items():
        assert set(arm["test"]["groups"]) == set(TASK_GROUPS), name
        assert arm["params_total"] >= arm["params_active"] > 0
    arms = report["arms"]
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
    markdown = (tmp_path / "report.md").read_text()
    assert "Toy scale" in markdown and "| moe |" in markdown and "MoE worse on" in markdown
    for arm in ("linear", "mlp", "moe"):
        assert (tmp_path / "runs" / arm / "model" / "lalm_config.yaml").is_file()
    # analysis of every trained arm: conflict ratios, MoE NMI against its shuffled-label chance, plots on disk
    analysis = report["analysis"]
    assert set(analysis["conflict_ratio"]) == set(arms)
    for name, ratio in analysis["conflict_ratio"].items():
        assert ratio is not None and 0.0 <= ratio <= 1.0, name
    assert set(analysis["nmi"]) == {"moe"}  # only the MoE routes
    nmi = analysis["nmi"]["moe"]
    assert {"category", "task", "task_group"} <= set(nmi)
    assert all(0.0 <= v["nmi"] <= 1.0 and 0.0 <= v["chance"] <= 1.0 for v in nmi.values())
    assert analysis["balance"]["moe"]["cv"] >= 0.0
    assert {"cosine_category", "activation_moe_category", "load"} <= set(analysis["plots"])
    for path in analysis["plots"].values():
        assert path.startswith("analysis/") and (tmp_path / path).stat().st_size > 1000, path
        assert f"]({path})" in markdown
    assert (tmp_path / "analysis" / "analysis.json").is_file()
    assert "## Analysis" in markdown and "paper MoE" in markdown and "reproduce" in markdown
    assert all(c["reproduces"] in (True, False, None) for c in analysis["claims"])
