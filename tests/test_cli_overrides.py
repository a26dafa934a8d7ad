"""One override style for every command (``key=value``, ``--set`` as an alias), with did-you-mean suggestions and
errors that blame the command line for a bad override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiomoe.cli.main import main as cli
from audiomoe.config import ConfigError, check_override_keys, load_config
from audiomoe.training.config import TrainConfig, load_train_config


def test_unknown_override_key_blames_the_command_line_and_suggests_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_train_config("demo-quick", ["optim.lrr=1e-3"])
    message = str(err.value)
    assert message.startswith("override 'optim.lrr=1e-3' (command line): no key 'lrr' in optim")
    assert "(did you mean 'lr'?)" in message and "demo-quick" not in message
    with pytest.raises(ConfigError, match=r"no key 'modle' in TrainConfig \(did you mean 'model'\?\)"):
        check_override_keys(TrainConfig, ["modle.preset=tiny"])
    check_override_keys(TrainConfig, ["model.adapter.anything_goes=1", "optim.lr=1"])  # free-form dict below


def test_bad_override_value_blames_the_command_line_a_bad_file_value_blames_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^override 'precision=bf61' \(command line\).*did you mean 'bf16'"
    ):
        load_train_config("demo-quick", ["precision=bf61"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("precision: bf61\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, bad)
    assert str(err.value).startswith(f"{bad}: precision: 'bf61'")


def test_every_command_takes_key_value_and_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["params", "--preset", "paper-2601.02967", "top_k=2", "--json", str(tmp_path / "a.json")]) == 0
    assert (
        cli(
            ["params", "--preset", "paper-2601.02967", "--set", "top_k=2", "--json", str(tmp_path / "b.json")]
        )
        == 0
    )
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a == b and a["active_params"] < a["total_params"]
    for style in (["adapter.num_experts=2"], ["--set", "adapter.num_experts=2"]):
        out = tmp_path / f"model-{len(style)}"
        assert cli(["init", "--preset", "tiny", "--adapter", "moe", "--out", str(out), *style]) == 0
        assert "num_experts: 2" in (out / "lalm_config.yaml").read_text()
    assert cli(["train", "--config", "demo-quick", "--set", "optim.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
