"""The objective contract and registry: what one training micro-batch's loss is.

An objective chooses the training items it can use (:meth:`Objective.select`), how a batch is collated
(:meth:`Objective.collate`) and computes the loss (``objective(model, batch)``, called by the trainer at its one
loss call site under autocast). It returns an object with ``.loss``, ``.aux_loss`` and optionally ``.lm_loss``
(what the trainer logs) and keeps running sums of its own terms, which the trainer adds to each log record
(:meth:`Objective.log_terms`). New objectives are registry entries::

    @register_objective("myobjective")
    class MyObjective(Objective): ...
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from audiomoe.config import ConfigError, did_you_mean
from audiomoe.data.manifest import AudioRecord
from audiomoe.models.batching import RecordBatcher
from audiomoe.training.config import ObjectiveSection


@dataclass
class ObjectiveOutput:
    """``loss`` (scalar, what is back-propagated: objective terms + weighted adapter aux loss), ``aux_loss`` (the
    adapter's, unweighted by aux_loss_weight, logged), ``lm_loss`` (None: the trainer then logs ``loss``)."""

    loss: torch.Tensor
    aux_loss: torch.Tensor
    lm_loss: torch.Tensor | None = None


class Objective:
    """Base: the plain next-token loss on manifest answers lives in :class:`~.lm.LMObjective`."""

    name = ""

    def __init__(self, config: ObjectiveSection) -> None:
        self.config = config
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def select(self, records: list[AudioRecord]) -> list[AudioRecord]:
        """The training items this objective can use (default: all)."""
        return records

    def collate(self, batcher: RecordBatcher) -> Callable[[Sequence[int]], Any]:
        """indices -> batch (default: the model's keyword batch with answers as labels)."""
        return batcher.collate

    def __call__(self, model: nn.Module, batch: Any) -> Any:
        raise NotImplementedError

    def record(self, **terms: float | torch.Tensor) -> None:
        """Add one micro-batch's values of named terms to the running means."""
        for key, value in terms.items():
            self._sums[key] += float(value.detach() if isinstance(value, torch.Tensor) else value)
            self._counts[key] += 1

    def log_terms(self) -> dict[str, float]:
        """``{"objective/<term>": mean since the last call}``, then reset (this process's micro-batches)."""
        out = {f"objective/{k}": round(self._sums[k] / self._counts[k], 6) for k in sorted(self._sums)}
        self._sums.clear()
        self._counts.clear()
        return out


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def deco(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return deco


def build_objective(config: ObjectiveSection) -> Objective:
    if config.type not in OBJECTIVES:
        raise ConfigError(
            f"objective.type {config.type!r} is unknown{did_you_mean(config.type, OBJECTIVES)}; "
            f"choose one of {sorted(OBJECTIVES)}"
        )
    return OBJECTIVES[config.type](config)
