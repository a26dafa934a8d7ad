"""Metric logger backends beside ``RUN/metrics.jsonl`` (``log.backends`` in a train config): a registry, one
entry per backend, each ``open(run_dir, config, resumed_step) -> MetricLogger``.

- ``jsonl``: ``RUN/metrics.jsonl``, always written by the trainer (the file ``--resume`` trims and tools read);
  naming it is allowed and changes nothing.
- ``tensorboard``: ``RUN/tensorboard`` through ``torch.utils.tensorboard`` (pip extra ``audiomoe[tensorboard]``).
- ``wandb``: Weights & Biases (pip extra ``audiomoe[wandb]``); offline (files under ``RUN/wandb``) unless an API
  key is configured (``WANDB_API_KEY``) or ``WANDB_MODE`` says otherwise — ``WANDB_MODE`` always wins.

A backend asked for but not installed raises :class:`MissingBackend` (an ``OSError``: exit 3, the environment)
naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from audiomoe.config import ConfigError, to_dict
from audiomoe.training.config import TrainConfig


class MissingBackend(OSError):
    """A logger backend named in the config whose package is not installed (the environment's fault)."""


class MetricLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> tuple[str, int, dict[str, float]]:
    """``(split, step, {name: number})`` of one metrics record (non-numeric fields dropped)."""
    values = {
        k: float(v)
        for k, v in record.items()
        if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return str(record.get("split", "train")), int(record["step"]), values


def _require(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingBackend(
            f"log.backends: {backend!r} needs the {module.split('.')[0]} package, which is not installed; "
            f"pip install 'audiomoe[{backend}]' or remove {backend!r} from log.backends"
        ) from None


class TensorBoardLogger:
    def __init__(self, run_dir: Path, config: TrainConfig, resumed_step: int) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run overwrites what a killed run logged after its last checkpoint
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        split, step, values = scalars(record)
        for key, value in values.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, config: TrainConfig, resumed_step: int) -> None:
        wandb = _require("wandb", "wandb")
        # offline unless a key is configured: a run never blocks on a login prompt; WANDB_MODE always wins
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=config.log.wandb_project,
            dir=str(run_dir),
            name=run_dir.name,
            id=run_dir.name,
            resume="allow",
            mode=mode,
            config=to_dict(config),
        )

    def log(self, record: dict[str, Any]) -> None:
        split, step, values = scalars(record)
        self.run.log({f"{split}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class Backend:
    open: Callable[[Path, TrainConfig, int], MetricLogger] | None  # None: written by the trainer itself


BACKENDS: dict[str, Backend] = {
    "jsonl": Backend(None),
    "tensorboard": Backend(TensorBoardLogger),
    "wandb": Backend(WandbLogger),
}


def chosen_backends(config: TrainConfig) -> list[str]:
    """The backends a run uses: ``log.backends`` as given (checked), or the default (``jsonl``, plus
    ``tensorboard`` when installed and the older ``tensorboard`` switch is on)."""
    for name in config.log.backends:
        if name not in BACKENDS:
            raise ConfigError(f"log.backends: unknown backend {name!r}; choose from {sorted(BACKENDS)}")
    if config.log.backends:
        if "tensorboard" in config.log.backends and not config.tensorboard:
            raise ConfigError(
                "log.backends names tensorboard but tensorboard=false; drop one of them "
                "(tensorboard= is the older switch, log.backends replaces it)"
            )
        return list(dict.fromkeys(config.log.backends))
    installed = importlib.util.find_spec("tensorboard") is not None
    return ["jsonl", *(["tensorboard"] if config.tensorboard and installed else [])]


def open_loggers(run_dir: Path, config: TrainConfig, resumed_step: int) -> list[MetricLogger]:
    """Open every chosen backend except ``jsonl`` (raises ``MissingBackend`` / ``ConfigError``)."""
    return [
        BACKENDS[name].open(run_dir, config, resumed_step)  # type: ignore[misc]
        for name in chosen_backends(config)
        if BACKENDS[name].open is not None
    ]
