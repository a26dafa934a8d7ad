"""A resumable, endless stream of training batches.

The stream asks a *plan* for the batches of an epoch (lists of dataset indices, deterministic for the epoch and
this process's rank — e.g. ``audiomoe.data``'s duration-bucketed sampler) and loads each one with ``collate``.
Its state is just ``(epoch, position)``: resuming replays the plan of the saved epoch and skips to the position,
which costs nothing because skipped batches are never loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

Plan = Callable[[int], Sequence[Sequence[int]]]


class BatchStream(Iterator[Any]):
    """``next(stream)`` returns ``collate(indices)`` for the next batch, moving to the next epoch when one ends."""

    def __init__(self, plan: Plan, collate: Callable[[Sequence[int]], Any]) -> None:
        self.plan = plan
        self.collate = collate
        self.epoch = 0
        self.position = 0
        self._batches: Sequence[Sequence[int]] | None = None

    def __next__(self) -> Any:
        for _ in range(2):
            if self._batches is None:
                self._batches = self.plan(self.epoch)
            if self.position < len(self._batches):
                indices = self._batches[self.position]
                self.position += 1
                return self.collate(indices)
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        raise ValueError(f"the batch plan for epoch {self.epoch} is empty: is the training manifest empty?")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None
