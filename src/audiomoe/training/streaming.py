"""Training batches streamed from tar shards (:mod:`audiomoe.data.shards`): no list of the corpus is ever built.

Per epoch the shard list is permuted by ``(seed, epoch)`` and dealt round-robin: rank ``r`` of ``W`` reads
shards ``r, r + W, ...`` of that order, so the ranks' shards are disjoint and together complete. Each rank reads
its shards in order and shuffles records in consecutive windows of ``data.shuffle_buffer`` records, each window
permuted by ``(seed, epoch, rank, window)``: a bounded shuffle whose order is a pure function of the position,
so the position alone resumes it exactly. Batches take ``data.batch_size`` records in that order (the last of an
epoch may be shorter); a record's clip is decoded as its batch is built.

The state (saved per rank in each checkpoint, ``stream_rank{r}.pt``) is ``epoch``, ``window`` (windows started
this epoch), ``shard`` / ``record`` (the shard of the rank's order and the record offset in it where that window
starts) and ``taken`` (records of the window already batched), plus the skip counts: a resume re-reads that one
window and continues at the next batch. A record whose fields do not parse or whose clip does not decode is
dropped from its batch and counted with ``data.on_bad_line=skip`` (else the run stops naming it).
"""

from __future__ import annotations

import random
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiomoe.data.audio import AudioError
from audiomoe.data.manifest import AudioRecord, ManifestError, load_record_clips, parse_line
from audiomoe.data.shards import iter_samples, list_shards, sample_fields
from audiomoe.data.sources import Source, as_source
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.processor import AudioLanguageProcessor
from audiomoe.training.loading import MAX_REASONS


def is_streamed(specs: Sequence[str | Source]) -> bool:
    """Whether ``data.train`` is a set of shards (every entry must then be one: they are not mixed with lists)."""
    formats = [_is_shard_source(as_source(s)) for s in specs]
    if any(formats) and not all(formats):
        raise ValueError(
            "data.train mixes tar shards with listed sources; stream one shard set (write the others as shards "
            "with `audiomoe data shard`) or list them all"
        )
    return bool(formats) and all(formats)


def _is_shard_source(source: Source) -> bool:
    from audiomoe.data.sources import detect_format

    return (source.format or detect_format(source.path)) == "shards"


@dataclass
class Sample:
    """One streamed record: where it is (shard of the rank's order, offset in it) and its members."""

    shard: int
    offset: int
    path: Path
    key: str
    files: dict[str, bytes]


class ShardStream(Iterator[Any]):
    """``next(stream)``: the next training batch of this rank's shards (see the module docstring)."""

    per_rank_state = True  # the trainer saves this state for every rank, not only rank 0's

    def __init__(
        self, shards: Sequence[Path], processor: AudioLanguageProcessor, batch_size: int, seed: int = 0,
        rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000, skip_bad: bool = False,
        task: str = "", max_text_chars: int = 10_000,
    ) -> None:  # fmt: skip
        if len(shards) < world_size:
            raise ValueError(
                f"{len(shards)} shard(s) for {world_size} processes: every rank needs at least one shard; "
                "write smaller shards (`audiomoe data shard --shard-size`)"
            )
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.shards, self.processor, self.batch_size = list(shards), processor, batch_size
        self.seed, self.rank, self.world_size, self.shuffle_buffer = seed, rank, world_size, shuffle_buffer
        self.skip_bad, self.task, self.max_text_chars = skip_bad, task, max_text_chars
        self.epoch = self.window = self.shard = self.record = self.taken = 0
        self.skipped = self.bad_records = 0
        self.reasons: list[str] = []
        self.tasks: set[str] = set()
        self._windows: Iterator[list[Sample]] | None = None
        self._current: list[Sample] = []

    # ------------------------------------------------------------------------------------------ order
    def rank_shards(self, epoch: int) -> list[Path]:
        """This rank's shards for ``epoch``: the seeded permutation of all shards, every ``world_size``-th."""
        order = list(self.shards)
        random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        return order[self.rank :: self.world_size]

    def _samples(self, epoch: int, shard: int, record: int) -> Iterator[Sample]:
        for position, path in enumerate(self.rank_shards(epoch)[shard:], start=shard):
            for offset, (key, files) in enumerate(iter_samples(path)):
                if position == shard and offset < record:
                    continue  # before the resumed window: read past, never decoded
                yield Sample(position, offset, path, key, files)

    def _window_stream(self) -> Iterator[list[Sample]]:
        """Shuffled windows from the current (epoch, window, shard, record); updates the position as it goes."""
        samples = self._samples(self.epoch, self.shard, self.record)
        window = self.window
        while True:
            chunk = [s for _, s in zip(range(self.shuffle_buffer), samples)]
            if not chunk:
                return
            random.Random(f"window-{self.seed}-{self.epoch}-{self.rank}-{window}").shuffle(chunk)
            start = min((s.shard, s.offset) for s in chunk)
            self.window, (self.shard, self.record) = window, start
            yield chunk
            window += 1

    def _next_sample(self) -> Sample | None:
        """The next record of the epoch, None at its end."""
        while self.taken >= len(self._current) or self._windows is None:
            if self._windows is None:
                self._windows = self._window_stream()
                resumed_taken = self.taken
            else:
                resumed_taken = 0
            chunk = next(self._windows, None)
            if chunk is None:
                return None
            self._current, self.taken = chunk, resumed_taken
            if self.taken < len(self._current):
                break
        sample = self._current[self.taken]
        self.taken += 1
        return sample

    # ------------------------------------------------------------------------------------------ batches
    def __next__(self) -> Any:
        epochs_ended = 0  # in this call: two without a batch means nothing decodes
        while True:
            if epochs_ended > 1:
                raise ValueError(
                    "no record of the training shards decodes; run `audiomoe data validate` on them"
                )
            samples: list[Sample] = []
            while len(samples) < self.batch_size:
                sample = self._next_sample()
                if sample is None:
                    break
                samples.append(sample)
            if not samples:  # the epoch ended on a batch boundary
                self._new_epoch()
                epochs_ended += 1
                continue
            batch = self._decode(samples)
            if len(samples) < self.batch_size or self._exhausted():
                self._new_epoch()
                epochs_ended += 1
            if batch is not None:
                return batch

    def _exhausted(self) -> bool:
        """Whether the epoch has no record left (reads the next window when this one is used up, so the epoch
        of the position always is the epoch of the next batch)."""
        if self.taken < len(self._current):
            return False
        chunk = next(self._windows, None) if self._windows is not None else None
        if chunk is None:
            return True
        self._current, self.taken = chunk, 0
        return False

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.window = self.shard = self.record = self.taken = 0
        self._windows, self._current = None, []

    def _record(self, sample: Sample) -> tuple[AudioRecord, str, bytes]:
        fields, extension, data = sample_fields(sample.path, sample.key, sample.files)
        if self.task and not fields.get("task"):
            fields["task"] = self.task
        record = parse_line({**fields, "audio": f"{sample.key}.{extension}"}, sample.offset + 1,
                            max_text_chars=self.max_text_chars)  # fmt: skip
        return record, extension, data

    def _decode(self, samples: list[Sample]) -> Any:
        """The batch of the samples that parse and decode (None when none does); the others are noted."""
        records, clips, reasons = [], [], []
        with tempfile.TemporaryDirectory(prefix="audiomoe-shard-") as tmp:
            for sample in samples:
                where = f"{sample.path.name}:{sample.key}"
                try:
                    record, extension, data = self._record(sample)
                    clip = Path(tmp) / f"clip.{extension}"
                    clip.write_bytes(data)  # decoded by the same loader as listed clips (checks, segments)
                    record.audio = str(clip)
                    clips.append(load_record_clips(record, self.processor.config.sampling_rate))
                except (ManifestError, AudioError) as err:
                    reasons.append(f"{where}: {str(err).replace(str(Path(tmp) / 'clip'), sample.key)}")
                    continue
                record.audio = f"{sample.path}#{sample.key}.{extension}"
                records.append(record)
                self.tasks.add(record.task)
        if reasons:
            if not self.skip_bad:
                raise AudioError(f"{reasons[0]} (data.on_bad_line=skip drops records that fail)")
            for reason in reasons:
                if len(self.reasons) < MAX_REASONS:
                    self.reasons.append(reason)
                    print(f"skipped a streamed record: {reason}")
            self.skipped += len(reasons)
        if not records:
            return None
        return RecordBatcher(records, self.processor).batch(
            records, [r.instruction for r in records], clips=clips
        )

    # ------------------------------------------------------------------------------------------ state
    def log_stats(self) -> dict[str, int]:
        return {"skipped_clips": self.skipped, "epoch": self.epoch}

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch, "window": self.window, "shard": self.shard, "record": self.record,
            "taken": self.taken, "skipped": self.skipped,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "window" not in state:
            raise ValueError(
                "the checkpoint's data position is not a shard stream position (was data.train changed?)"
            )
        self.epoch, self.window, self.shard = int(state["epoch"]), int(state["window"]), int(state["shard"])
        self.record, self.taken, self.skipped = (
            int(state["record"]),
            int(state["taken"]),
            int(state["skipped"]),
        )
        self._windows, self._current = None, []


def open_stream(config: Any, processor: AudioLanguageProcessor, rank: int, world_size: int) -> ShardStream:
    """The :class:`ShardStream` of ``config.data`` (a ``TrainConfig``); one-line errors for what streaming lacks."""
    data = config.data
    if data.feature_cache:
        raise ValueError(
            "data.feature_cache needs the list of clips, which streamed shards do not give; drop it"
        )
    if data.max_batch_seconds > 0:
        raise ValueError(
            "data.max_batch_seconds needs every duration in advance; streamed shards use data.batch_size"
        )
    if config.grad_conflict_every:
        raise ValueError(
            "grad_conflict_every draws probe batches from listed records; set it to 0 for shards"
        )
    if data.num_workers:
        print(f"note: streamed shards are decoded in the training process (data.num_workers={data.num_workers} "
              "applies to listed sources)", file=sys.stderr)  # fmt: skip
    sources = [as_source(s) for s in data.train]
    if len(sources) != 1 or sources[0].weight != 1.0 or sources[0].columns:
        raise ValueError(
            "stream one shard set: data.train takes one {path: DIR_or_glob} entry (a glob covers several folders)"
        )
    return ShardStream(
        list_shards(sources[0].path), processor, data.batch_size, seed=config.seed, rank=rank,
        world_size=world_size, shuffle_buffer=data.shuffle_buffer, skip_bad=data.on_bad_line == "skip",
        task=sources[0].task, max_text_chars=data.max_text_chars,
    )  # fmt: skip
