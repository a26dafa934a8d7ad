"""Training data loading: sources -> records -> a batch plan -> batches decoded in DataLoader workers.

- :func:`read_sources` reads every ``data.train`` entry (any format, :mod:`audiomoe.data.sources`);
  :func:`by_source` remembers which source each record came from (for weighted mixing).
- :func:`fill_durations` reads the durations a manifest lacks from the audio headers (no decoding), so bucketing
  and duration budgets work on every manifest; the run summary says how many were filled.
- :func:`build_plan`: duration-bucketed fixed-size batches (``data.batch_size``) or duration-budget batches
  (``data.max_batch_seconds``), over a weighted mixture when any source has a weight other than 1.
- :class:`LoaderStream`: the training stream. Decoding and feature extraction run in ``data.num_workers``
  DataLoader worker processes (0 = in this process); the batches arrive in plan order, so a run is the same
  with any worker count, and its state is the :class:`~audiomoe.training.stream.BatchStream` state
  ``(epoch, position)`` (plus the skip count), so resuming works as before. A clip that fails to decode is
  dropped from its batch when ``data.on_bad_line=skip`` (counted in ``metrics.jsonl`` as ``skipped_clips``, the
  first reasons kept for the summary), else the run stops with the decoder's one-line reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from audiomoe.data.audio import AudioError, audio_info
from audiomoe.data.budget import DurationBudgetSampler, MixturePlan
from audiomoe.data.manifest import MAX_TEXT_CHARS, AudioRecord, ManifestLoad, load_manifest
from audiomoe.data.sampler import BucketBatchSampler
from audiomoe.data.sources import Source, as_source
from audiomoe.models.batching import RecordBatcher
from audiomoe.training.config import DataSection
from audiomoe.training.stream import Plan

MAX_REASONS = 5  # skip reasons kept for the log and the summary


def read_sources(
    specs: Sequence[str | Source], on_bad_line: str, max_text_chars: int = MAX_TEXT_CHARS
) -> list[ManifestLoad]:
    """Every source parsed (any format); the summary of skipped lines goes to stderr."""
    loads = []
    for spec in specs:
        loaded = load_manifest(as_source(spec), on_error=on_bad_line, max_text_chars=max_text_chars)  # type: ignore[arg-type]
        if loaded.problems:
            print(loaded.summary(), file=sys.stderr)
        loads.append(loaded)
    return loads


def by_source(kept: Sequence[Sequence[AudioRecord]]) -> tuple[list[AudioRecord], list[int]]:
    """The records of every source in order, and the source index of each (for weighted mixing)."""
    records = [record for source in kept for record in source]
    origin = [number for number, source in enumerate(kept) for _ in source]
    return records, origin


def fill_durations(records: Sequence[AudioRecord]) -> int:
    """Set each missing ``duration`` from the file header (segments without one: to the end of the file);
    returns how many were filled. Unreadable headers are left alone (the loader reports them)."""
    filled = 0
    for record in records:
        if record.duration is None:
            try:
                total = sum(audio_info(path).duration for path in record.paths)  # several clips: their sum
            except AudioError:
                continue
            record.duration = total - (record.start or 0.0)
            filled += 1
    return filled


def build_plan(
    records: Sequence[AudioRecord], origin: Sequence[int], weights: Sequence[float], data: DataSection,
    seed: int, rank: int, world_size: int,
) -> Any:  # fmt: skip
    """The batch plan (``batches(epoch)``, ``padding_fraction(epoch)``) the data section asks for."""

    def inner(durations: list[float]) -> Any:
        if data.max_batch_seconds > 0:
            return DurationBudgetSampler(
                durations, data.max_batch_seconds, data.batch_size, data.quadratic_duration, seed=seed,
                rank=rank, world_size=world_size,
            )  # fmt: skip
        return BucketBatchSampler(durations, data.batch_size, seed=seed, rank=rank, world_size=world_size)

    durations = [r.duration or 0.0 for r in records]
    if all(w == 1.0 for w in weights):
        return inner(durations)
    return MixturePlan(durations, origin, weights, inner, seed=seed)


Loaded = tuple[dict[str, torch.Tensor] | None, list[str]]


class _Batches(Dataset):
    """Item ``i`` is batch ``i`` of a fixed list, decoded: ``(batch or None, skip reasons)``."""

    def __init__(self, batches: Sequence[Sequence[int]], load: Callable[[Sequence[int]], Loaded]) -> None:
        self.batches, self.load = batches, load

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Loaded:
        return self.load(self.batches[index])


def decode_batch(batcher: RecordBatcher, indices: Sequence[int]) -> Loaded:
    """Decode each record's clip on its own, so one bad clip costs only itself; the batch of the clips that
    decoded (None when none did) and one reason per clip that did not."""
    if (
        batcher.reads_cache
    ):  # encoder outputs are cached: nothing to decode (the cache fill decoded every clip)
        records = [batcher.records[i] for i in indices]
        return batcher.batch(records, [r.instruction for r in records]), []
    records, clips, reasons = [], [], []
    for index in indices:
        record = batcher.records[index]
        try:
            clips.append(batcher.load(record))
        except AudioError as err:
            reasons.append(f"{record.key}: {err}")
            continue
        records.append(record)
    if not records:
        return None, reasons
    return batcher.batch(records, [r.instruction for r in records], clips=clips), reasons


def collated_batch(collate: Callable[[Sequence[int]], Any], indices: Sequence[int]) -> Loaded:
    """``collate(indices)`` as a loader result: an objective's own batches, decoded whole (no per-clip skip)."""
    return collate(indices), []


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a worker decodes one batch; threads would only contend with training


class LoaderStream(Iterator[Any]):
    """``next(stream)``: the next batch of the plan, decoded by ``load`` (in workers when ``num_workers``)."""

    def __init__(
        self,
        plan: Plan,
        load: Callable[[Sequence[int]], Loaded],
        num_workers: int = 0,
        skip_bad_clips: bool = False,
    ) -> None:
        self.plan, self.load, self.num_workers, self.skip_bad_clips = plan, load, num_workers, skip_bad_clips
        self.epoch = 0
        self.position = 0
        self.skipped = 0
        self.reasons: list[str] = []
        self._iterator: Iterator[Loaded] | None = None

    def _open(self) -> Iterator[Loaded]:
        remaining = list(self.plan(self.epoch))[self.position :]
        if not remaining and self.position == 0:
            raise ValueError(
                f"the batch plan for epoch {self.epoch} is empty: is the training manifest empty?"
            )
        if self.num_workers == 0:
            return (self.load(batch) for batch in remaining)
        loader = DataLoader(
            _Batches(remaining, self.load), batch_size=None, shuffle=False, num_workers=self.num_workers,
            worker_init_fn=_one_thread, prefetch_factor=2, persistent_workers=False,
        )  # fmt: skip
        return iter(loader)

    def __next__(self) -> Any:
        empty_epochs = 0
        while True:
            if self._iterator is None:
                self._iterator = self._open()
            try:
                batch, reasons = next(self._iterator)
            except StopIteration:
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
                empty_epochs += 1
                if empty_epochs > 1:
                    raise ValueError(
                        "no clip of the training data decodes; run `audiomoe data validate`"
                    ) from None
                continue
            self.position += 1
            if reasons:
                if not self.skip_bad_clips:
                    raise AudioError(f"{reasons[0]} (data.on_bad_line=skip drops clips that fail to decode)")
                self._note(reasons)
            if batch is not None:
                return batch

    def _note(self, reasons: list[str]) -> None:
        for reason in reasons:
            if len(self.reasons) < MAX_REASONS:
                self.reasons.append(reason)
                print(f"skipped a clip that does not decode: {reason}")
        self.skipped += len(reasons)

    def log_stats(self) -> dict[str, int]:
        """Fields of the training log line (metrics.jsonl)."""
        return {"skipped_clips": self.skipped}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped, self._iterator = int(state.get("skipped", 0)), None
