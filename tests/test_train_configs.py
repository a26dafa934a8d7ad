"""Every shipped config is listed by ``audiomoe config list``, loads by name from any directory, and its model
config resolves (no weights are loaded); ``config show`` / ``copy`` hand out the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiomoe.adapters.presets import count_parameters
from audiomoe.cli.main import main as cli
from audiomoe.config import SHIPPED_DIR, ConfigError, load_config, shipped_configs
from audiomoe.models.lalm import LALMConfig
from audiomoe.training.config import load_train_config
from audiomoe.training.run import resolve_lalm_config

SHIPPED = sorted(SHIPPED_DIR.glob("*.yaml"))
CONFIGS = [p for p in SHIPPED if not p.name.startswith("lalm-")]
HIDDEN = {"qwen3-1.7b": 2048, "qwen2.5-7b": 3584}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # by name, from anywhere: model.config names a shipped config too
    config = load_train_config(path.stem)
    lalm = resolve_lalm_config(config.model)
    assert lalm.adapter["type"] in ("moe", "mlp", "linear")
    assert config.data.train and config.steps > 0


@pytest.mark.parametrize("llm", sorted(HIDDEN))
def test_paper_arms_have_matched_totals(llm: str) -> None:
    counts = {}
    for arm in ("moe", "dense"):
        adapter = resolve_lalm_config(load_train_config(f"paper-{arm}-{llm}").model).adapter
        counts[arm] = count_parameters({**adapter, "input_dim": 1280, "output_dim": HIDDEN[llm]})
    assert counts["dense"]["total_params"] == pytest.approx(counts["moe"]["total_params"], rel=1e-3)
    assert counts["moe"]["active_params"] < 0.8 * counts["moe"]["total_params"]


def test_config_list_shows_every_shipped_config_and_each_loads(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(SHIPPED) >= 9 and set(shipped_configs()) == {p.stem for p in SHIPPED}
    assert cli(["config", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [p.stem for p in SHIPPED]
    for path in SHIPPED:
        if path.name.startswith("lalm-"):
            assert load_config(LALMConfig, path.stem).adapter["type"] == "moe"
        else:
            assert load_train_config(f"{path.stem}.yaml").steps > 0


def test_config_show_and_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["config", "show", "demo"]) == 0
    assert capsys.readouterr().out == (SHIPPED_DIR / "demo.yaml").read_text()
    assert cli(["config", "copy", "demo-quick", str(tmp_path)]) == 0
    copied = tmp_path / "demo-quick.yaml"
    assert copied.read_text() == (SHIPPED_DIR / "demo-quick.yaml").read_text()
    assert load_train_config(copied, ["steps=3"]).steps == 3
    capsys.readouterr()
    assert cli(["config", "copy", "demo-quick", str(copied)]) == 2  # no silent overwrite
    assert "exists; choose another destination or pass --force" in capsys.readouterr().err
    assert cli(["config", "copy", "demo-quick", str(copied), "--force"]) == 0
    assert cli(["config", "show", "nope"]) == 2
    assert "no shipped config 'nope'; shipped: demo-quick, demo," in capsys.readouterr().err
    with pytest.raises(
        ConfigError, match=r"'nope\.yaml' is neither a file nor a shipped config; shipped: demo"
    ):
        load_train_config("nope.yaml")


def test_deep_merge_is_the_one_config_merge() -> None:
    from audiomoe.config import deep_merge

    base = {"adapter": {"type": "moe", "num_experts": 8}, "lora": {"llm": True}, "seed": 0}
    extra = {"adapter": {"num_experts": 4}, "lora": None, "seed": 1, "new": {"a": [1]}}
    merged = deep_merge(base, extra)
    assert merged == {
        "adapter": {"type": "moe", "num_experts": 4},
        "lora": None,
        "seed": 1,
        "new": {"a": [1]},
    }
    merged["adapter"]["type"] = "linear"
    merged["new"]["a"].append(2)
    assert base["adapter"]["type"] == "moe" and extra["new"] == {"a": [1]}  # inputs untouched
