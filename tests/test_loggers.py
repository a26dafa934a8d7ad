"""Logger backends: the registry's choice, the one-line error naming the extra, fakes in place of wandb."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from audiomoe.cli.main import exit_code
from audiomoe.config import ConfigError
from audiomoe.training import loggers
from audiomoe.training.config import load_train_config


def test_default_is_jsonl_plus_tensorboard_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"tensorboard": None}
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: installed[name])
    assert loggers.chosen_backends(load_train_config(None, [])) == ["jsonl"]
    installed["tensorboard"] = object()
    assert loggers.chosen_backends(load_train_config(None, [])) == ["jsonl", "tensorboard"]
    assert loggers.chosen_backends(load_train_config(None, ["tensorboard=false"])) == ["jsonl"]


def test_bad_choices_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'mlflow'"):
        loggers.chosen_backends(load_train_config(None, ["log.backends=[jsonl,mlflow]"]))
    with pytest.raises(ConfigError, match="tensorboard=false"):
        loggers.chosen_backends(load_train_config(None, ["log.backends=[tensorboard]", "tensorboard=false"]))


def test_missing_package_names_the_extra_and_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    config = load_train_config(None, ["log.backends=[jsonl,wandb]"])
    with pytest.raises(loggers.MissingBackend) as err:
        loggers.open_loggers(tmp_path, config, 0)
    assert "pip install 'audiomoe[wandb]'" in str(err.value) and "\n" not in str(err.value)
    assert exit_code(err.value) == 3


def test_wandb_offline_by_default_and_wandb_mode_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    logged: list[tuple[dict[str, float], int]] = []

    class Run:
        def log(self, values: dict[str, float], step: int) -> None:
            logged.append((values, step))

        def finish(self) -> None:
            logged.append(({}, -1))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = load_train_config(None, ["log.backends=[jsonl,wandb]"])
    (run,) = loggers.open_loggers(tmp_path / "run-a", config, 0)
    run.log({"step": 3, "loss": 1.5, "split": "train", "note": "x", "ok": True})
    run.close()
    assert calls[0]["mode"] == "offline" and calls[0]["dir"] == str(tmp_path / "run-a")
    assert logged == [({"train/loss": 1.5}, 3), ({}, -1)]
    monkeypatch.setenv("WANDB_API_KEY", "k")
    loggers.open_loggers(tmp_path / "b", config, 0)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers.open_loggers(tmp_path / "c", config, 0)
    assert [c["mode"] for c in calls] == ["offline", "online", "disabled"]
