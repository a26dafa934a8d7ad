"""Duration-budget batching and weighted source mixing: batch plans with the interface of
:class:`~audiomoe.data.sampler.BucketBatchSampler` (``batches(epoch)``, ``padding_fraction(epoch)``).

Duration budget (lhotse ``DynamicBucketingSampler`` style): clips are sorted into equal-count duration buckets;
inside a bucket (shuffled by ``(seed, epoch)``) a batch grows while ``len(batch) * longest effective duration``
stays within ``max_seconds`` (and ``len(batch) <= max_batch_size``). That is the padded audio a batch costs, so
short clips come many to a batch and long ones few. ``quadratic_duration`` (seconds, 0 = off) adds attention's
cost as lhotse does: an effective duration ``d + d**2 / quadratic_duration``. A clip longer than the budget forms
a batch of its own (never dropped). Ranks take every ``world_size``-th batch of the same global list, cut to a
multiple of ``world_size``, as the bucketed sampler does.

Mixing (NeMo / LLaMA-Factory style ``weight``): each epoch takes every record of a source ``floor(weight)`` times
plus a seeded ``frac(weight)`` share of them, then batches that list with the plan given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from audiomoe.data.sampler import padding_fraction


class DurationBudgetSampler:
    """Batches of at most ``max_seconds`` padded (effective) audio; deterministic by ``(seed, epoch)``.

    Args:
        durations: clip length per dataset index in seconds, shape ``(N,)``.
        max_seconds: padded seconds per batch (``len(batch) * max effective duration``).
        max_batch_size: clips per batch at most (0 = no limit).
        quadratic_duration: 0, or the lhotse-style constant of the quadratic cost term.
        num_buckets, seed, rank, world_size: as in ``BucketBatchSampler``.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        max_batch_size: int = 0,
        quadratic_duration: float = 0.0,
        num_buckets: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) < world_size:
            raise ValueError(f"{len(self.durations)} clips cannot feed {world_size} ranks")
        cost = self.durations
        if quadratic_duration > 0:
            cost = cost + cost**2 / quadratic_duration
        self.cost = cost
        self.max_seconds = float(max_seconds)
        self.max_batch_size = int(max_batch_size)
        self.num_buckets = min(num_buckets, max(1, len(self.durations)))
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def _global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cost))
        order = order[np.argsort(self.cost[order], kind="stable")]
        batches: list[list[int]] = []
        for bucket in np.array_split(order, self.num_buckets):
            batch: list[int] = []
            longest = 0.0
            for index in rng.permutation(bucket).tolist():
                grown = max(longest, float(self.cost[index]))
                full = self.max_batch_size and len(batch) >= self.max_batch_size
                if batch and (full or (len(batch) + 1) * grown > self.max_seconds):
                    batches.append(batch)
                    batch, grown = [], float(self.cost[index])
                batch.append(index)
                longest = grown
            if batch:
                batches.append(batch)
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self, epoch: int = 0) -> list[list[int]]:
        batches = self._global_batches(epoch)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def padding_fraction(self, epoch: int = 0) -> float:
        return padding_fraction(self.batches(epoch), self.durations)


def epoch_indices(sources: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> list[int]:
    """The dataset indices of one epoch under source ``weights`` (``sources[i]`` is record i's source)."""
    rng = np.random.default_rng([seed, epoch, 7919])  # its own stream: the batch order uses (seed, epoch)
    members = np.asarray(sources)
    out: list[int] = []
    for source, weight in enumerate(weights):
        own = np.flatnonzero(members == source)
        whole, frac = int(weight), weight - int(weight)
        out += own.tolist() * whole
        if frac > 0 and len(own):
            out += sorted(rng.choice(own, size=max(1, round(frac * len(own))), replace=False).tolist())
    return out


class MixturePlan:
    """A batch plan over a weighted mixture: ``build(durations_of_the_epoch_list)`` makes the inner plan."""

    def __init__(
        self,
        durations: Sequence[float],
        sources: Sequence[int],
        weights: Sequence[float],
        build: Callable[[list[float]], Any],
        seed: int = 0,
    ) -> None:
        self.durations = list(durations)
        self.sources, self.weights, self.build, self.seed = list(sources), list(weights), build, seed

    def batches(self, epoch: int = 0) -> list[list[int]]:
        chosen = epoch_indices(self.sources, self.weights, self.seed, epoch)
        inner = self.build([self.durations[i] for i in chosen])
        return [[chosen[j] for j in batch] for batch in inner.batches(epoch)]

    def padding_fraction(self, epoch: int = 0) -> float:
        return padding_fraction(self.batches(epoch), self.durations)
