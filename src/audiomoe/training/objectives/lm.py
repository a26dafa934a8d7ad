"""``lm``: the next-token loss on the manifest's answers plus the adapter's auxiliary loss (the model's own
``forward(**batch).loss``; what training did before objectives existed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from audiomoe.training.objectives.base import Objective, register_objective


@register_objective("lm")
class LMObjective(Objective):
    def __call__(self, model: nn.Module, batch: Any) -> Any:
        return model(**batch) if isinstance(batch, Mapping) else model(batch)
