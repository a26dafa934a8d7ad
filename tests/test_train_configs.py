"""Every shipped training config loads, and its model config resolves (no weights are loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiomoe.adapters.presets import count_parameters
from audiomoe.training.config import load_train_config
from audiomoe.training.run import resolve_lalm_config

CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if not p.name.startswith("lalm-")
)
HIDDEN = {"qwen3-1.7b": 2048, "qwen2.5-7b": 3584}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parents[1])  # model.config paths are relative to the repository root
    config = load_train_config(path)
    lalm = resolve_lalm_config(config.model)
    assert lalm.adapter["type"] in ("moe", "mlp", "linear")
    assert config.data.train and config.steps > 0


@pytest.mark.parametrize("llm", sorted(HIDDEN))
def test_paper_arms_have_matched_totals(llm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parents[1])
    counts = {}
    for arm in ("moe", "dense"):
        adapter = resolve_lalm_config(load_train_config(f"configs/paper-{arm}-{llm}.yaml").model).adapter
        counts[arm] = count_parameters({**adapter, "input_dim": 1280, "output_dim": HIDDEN[llm]})
    assert counts["dense"]["total_params"] == pytest.approx(counts["moe"]["total_params"], rel=1e-3)
    assert counts["moe"]["active_params"] < 0.8 * counts["moe"]["total_params"]
