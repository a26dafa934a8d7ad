"""Duration-bucketed batch sampler: less padding, deterministic by (seed, epoch), sharded across ranks, resumable.

Why buckets: a batch is padded to its longest clip, so mixing a 1 s and a 4 s clip wastes 3 s of encoder and
adapter compute. Clips are split into ``num_buckets`` equal-count duration buckets; batches are drawn inside one
bucket and the batch order is shuffled, so batches stay random while their members have similar lengths.
``num_buckets=1`` is plain random batching (the baseline ``padding_fraction`` is compared against).

Distributed: every rank builds the same global batch list (same seed and epoch) and takes every
``world_size``-th batch; the list is cut to a multiple of ``world_size`` so each rank runs the same number of
steps (no rank waits at a collective) and the shards are disjoint.

Resumption: ``state_dict()`` holds the epoch and how many batches this rank has consumed; after
``load_state_dict`` iteration continues with the next batch of that epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[float]) -> float:
    """Share of padded positions: ``1 - sum(lengths) / sum(len(batch) * max length in batch)``."""
    lengths = np.asarray(lengths, dtype=np.float64)
    used = padded = 0.0
    for batch in batches:
        member = lengths[np.asarray(batch, dtype=np.int64)]
        used += float(member.sum())
        padded += float(len(member) * member.max()) if len(member) else 0.0
    return 1.0 - used / padded if padded else 0.0


class BucketBatchSampler:
    """Yields lists of dataset indices (one list per batch) for this rank.

    Args:
        durations: clip length per dataset index (seconds or frames), shape ``(N,)``.
        batch_size: clips per batch.
        num_buckets: equal-count duration buckets (1 = random batching).
        seed: base seed; the batch order of epoch ``e`` depends only on ``(seed, e)``.
        rank, world_size: this process's shard.
        drop_last: drop the incomplete batch of each bucket.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        num_buckets: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) < world_size:
            raise ValueError(f"{len(self.durations)} clips cannot feed {world_size} ranks")
        self.batch_size = batch_size
        self.num_buckets = min(num_buckets, max(1, len(self.durations)))
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded on this rank

    def _global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        # Random tie-break before the stable sort so equal durations do not always bucket in index order.
        order = rng.permutation(len(self.durations))
        order = order[np.argsort(self.durations[order], kind="stable")]
        batches: list[list[int]] = []
        for bucket in np.array_split(order, self.num_buckets):
            bucket = rng.permutation(bucket)
            for start in range(0, len(bucket), self.batch_size):
                batch = bucket[start : start + self.batch_size]
                if len(batch) < self.batch_size and self.drop_last:
                    continue
                batches.append(batch.tolist())
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one), all of them, in order."""
        batches = self._global_batches(self.epoch if epoch is None else epoch)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        # Epoch finished: the next iteration starts the next epoch from its first batch.
        self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch = epoch
        self.position = 0

    def padding_fraction(self, epoch: int | None = None) -> float:
        """Padding share of this rank's batches for ``epoch`` (see :func:`padding_fraction`)."""
        return padding_fraction(self.batches(epoch), self.durations)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_clips": len(self.durations),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` was taken; refuses a state from a different dataset, seed or world size."""
        for key in ("seed", "num_clips", "world_size"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise ValueError(f"sampler state has {key}={state.get(key)!r} but this sampler has {mine!r}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
