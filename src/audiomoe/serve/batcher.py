"""Dynamic batching: concurrent requests answered by one batched ``AudioLanguageModel.generate``.

One worker thread owns the model. A request waits in a bounded queue (full: :class:`QueueFull`, the server's 429);
the worker takes the oldest one and, for up to ``max_wait_s`` after that request arrived, gathers more with the
same decoding settings (greedy, or sampling with equal temperature / top-p), at most ``max_batch``. Under load the
oldest request has already waited longer than that, so a batch forms at once from what is queued: waiting only
costs latency when the server is idle.

A request's prompt is tokenised and its clips featurised when it arrives (:func:`prepare`, on the server's
thread pool, where a prompt too long for the model is refused); the worker only pads those inputs together
(:func:`collate`, the same batch the processor would make) and decodes.

Each batch runs one ``generate`` with a streamer that receives every step's new tokens ``(B,)``: each request gets
its text deltas as they are decoded, and its own ``max_tokens`` ends its row (a stopping criterion per row), so a
short request in a batch with a long one stops counting, and a disconnected client's row stops early. Other work
on the model (the routing view) runs on the same thread between batches (:meth:`DynamicBatcher.call`), so the
model is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from audiomoe import runtime
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.serve.protocol import Prompt


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already (HTTP 429)."""


class NotRunning(Exception):
    """The batcher is stopped or its worker died (HTTP 503)."""


@dataclass
class Event:
    """What a request hears from the worker: ``delta`` text, then one ``done`` or ``error``."""

    kind: str  # "delta" | "done" | "error"
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Job:
    """One request in the queue: its prompt and its model inputs (:func:`prepare`). ``events`` is filled from
    the worker thread through the request's loop."""

    prompt: Prompt
    inputs: dict[str, torch.Tensor]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple:
        """Requests batch together only with equal decoding settings."""
        p = self.prompt
        return ("greedy",) if p.temperature <= 0 else ("sample", p.temperature, p.top_p)

    answered: bool = False  # something was sent: the request cannot be retried
    ended: bool = False  # its done or error event was sent

    def emit(self, event: Event) -> None:
        self.answered = True
        self.ended = self.ended or event.kind != "delta"
        if not self.cancelled.is_set():
            with contextlib.suppress(RuntimeError):  # the request's loop is closed: the server is going down
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class _Call:
    """A function to run on the worker thread alone (between batches)."""

    fn: Callable[[], Any]
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


def prepare(model: AudioLanguageModel, prompt: Prompt) -> dict[str, torch.Tensor]:
    """The processor's batch of one for ``prompt``: ``input_ids`` / ``attention_mask`` ``(1, L)`` and, with clips,
    ``audio_features`` ``(N, ..., T)`` and ``audio_lengths`` ``(N,)``. ValueError if the processor refuses the
    clips or the prompt plus ``max_tokens`` is longer than the LLM's positions."""
    inputs = model.processor([prompt.conversation], [list(prompt.clips)])
    context = getattr(model.llm.config.get_text_config(), "max_position_embeddings", None)
    length = int(inputs["input_ids"].shape[1])
    if context and length + prompt.max_tokens > context:
        raise ValueError(
            f"the prompt is {length} tokens (audio included); with max_tokens {prompt.max_tokens} that exceeds "
            f"the model's {context} positions: send shorter audio or text, or ask for fewer tokens"
        )
    return inputs


def collate(items: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batches of one (:func:`prepare`) -> one generation batch, exactly as the processor pads a batch: prompts
    left-padded with ``pad_token_id`` (mask 0), features right-padded with zeros to the longest clip, clips in
    request order."""
    width = max(int(item["input_ids"].shape[1]) for item in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        length = int(item["input_ids"].shape[1])
        ids[row, width - length :] = item["input_ids"][0]
        mask[row, width - length :] = item["attention_mask"][0]
    batch = {"input_ids": ids, "attention_mask": mask}
    features = [item["audio_features"] for item in items if "audio_features" in item]
    if features:
        longest = max(f.shape[-1] for f in features)
        padded = [torch.nn.functional.pad(f, (0, longest - f.shape[-1])) for f in features]
        batch["audio_features"] = torch.cat(padded)
        batch["audio_lengths"] = torch.cat(
            [item["audio_lengths"] for item in items if "audio_lengths" in item]
        )
    return batch


class TextDelta:
    """Incremental decoding of one row whose pieces add up to ``decode(ids).strip()`` exactly.

    A token can end inside a multi-byte character (byte tokenizers) and trailing whitespace may turn out to be
    the end of the answer, which is stripped: both are held back until later text makes them certain."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._decode().lstrip()
        end = len(text)
        while end and (text[end - 1].isspace() or text[end - 1] == "\ufffd"):
            end -= 1
        stable = text[:end]
        if len(stable) <= len(self.sent) or not stable.startswith(self.sent):
            return ""  # nothing new, or decoding rewrote earlier text: wait for the end
        delta, self.sent = stable[len(self.sent) :], stable
        return delta

    def finish(self) -> str:
        final = self._decode().strip()
        delta = final[len(self.sent) :] if final.startswith(self.sent) else ""
        self.sent = final
        return delta


class _BatchStreamer(BaseStreamer):
    """Hands each step's tokens ``(B,)`` to the batch's rows; a row ends on a stop token or its ``max_tokens``."""

    def __init__(self, jobs: list[Job], tokenizer: Any, stop_ids: set[int], prompt_tokens: list[int]) -> None:
        self.jobs = jobs
        self.stop_ids = stop_ids
        self.prompt_tokens = prompt_tokens
        self.rows = [TextDelta(tokenizer) for _ in jobs]
        self.finish: list[str | None] = [None] * len(jobs)

    def put(self, value: torch.Tensor) -> None:
        if value.ndim != 1:
            return  # the prompt (an empty (B, 0) tensor when decoding starts from embeddings)
        for i, token in enumerate(value.tolist()):
            if self.finish[i] is not None:
                continue
            job = self.jobs[i]
            if token in self.stop_ids:
                self._end(i, "stop")
                continue
            delta = self.rows[i].push(int(token))
            if delta:
                job.emit(Event("delta", delta))
            if len(self.rows[i].ids) >= job.prompt.max_tokens:
                self._end(i, "length")

    def end(self) -> None:
        for i in range(len(self.jobs)):
            if self.finish[i] is None:
                self._end(i, "length")

    def _end(self, i: int, reason: str) -> None:
        self.finish[i] = reason
        row, job = self.rows[i], self.jobs[i]
        tail = row.finish()
        if tail:
            job.emit(Event("delta", tail))
        job.emit(Event("done", finish_reason=reason, prompt_tokens=self.prompt_tokens[i],
                       completion_tokens=len(row.ids)))  # fmt: skip

    def row_done(self) -> list[bool]:
        return [f is not None or job.cancelled.is_set() for f, job in zip(self.finish, self.jobs)]


class _RowsDone(StoppingCriteria):
    """Per-row stop for ``generate``: a row whose request is answered (or whose client left) stops computing."""

    def __init__(self, streamer: _BatchStreamer) -> None:
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        # Called before the streamer sees this step's token: a row at max_tokens - 1 kept tokens ends now too.
        done = [
            d or len(row.ids) + 1 >= job.prompt.max_tokens
            for d, row, job in zip(self.streamer.row_done(), self.streamer.rows, self.streamer.jobs)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass
class BatcherStats:
    """Counters for ``GET /health`` and the benchmark: batch sizes run so far."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "largest_batch": self.largest_batch,
            "mean_batch": round(self.requests / self.batches, 3) if self.batches else 0.0,
            "failed_batches": self.failed_batches,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class DynamicBatcher:
    """Queue + worker thread over ``model.generate``; see the module docstring."""

    def __init__(
        self,
        model: AudioLanguageModel,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"batcher: max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1, "
                f"max_wait_s ({max_wait_s}) >= 0"
            )
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.precision = precision
        self.device = torch.device(device)
        self.stats = BatcherStats()
        self._pending: collections.deque[Job | _Call] = collections.deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop_ids = set(model._stop_ids())
        self._tokenizer = model.processor.tokenizer

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="audiomoe-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._running = False
            pending, self._pending = list(self._pending), collections.deque()
            self._cond.notify_all()
        for item in pending:
            _fail(item, "the server is shutting down")
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- submitting ---------------------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`QueueFull` if ``max_queue`` requests wait already, :class:`NotRunning` if
        stopped."""
        self._enqueue(job)

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the worker thread (alone with the model); the queue bound applies as for requests."""
        item = _Call(fn, Future())
        self._enqueue(item)
        return item.future

    def _enqueue(self, item: Job | _Call) -> None:
        with self._cond:
            if not self.running:
                raise NotRunning("the model worker is not running")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are queued already (max {self.max_queue})")
            self._pending.append(item)
            self._cond.notify_all()

    # -- worker -------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            work = self._next()
            if work is None:
                return
            if isinstance(work, _Call):
                if work.future.set_running_or_notify_cancel():
                    try:
                        work.future.set_result(work.fn())
                    except Exception as err:  # the caller gets it; the worker keeps serving
                        work.future.set_exception(err)
                continue
            self._run_batch(work)

    def _next(self) -> _Call | list[Job] | None:
        """The next piece of work: one call, or a batch of compatible jobs (waiting up to ``max_wait_s``)."""
        with self._cond:
            while True:
                while self._running and not self._pending:
                    self._cond.wait()
                if not self._running:
                    return None
                first = self._pending[0]
                if isinstance(first, _Call):
                    return self._pending.popleft()
                if first.cancelled.is_set():
                    self._pending.popleft()
                    continue
                deadline = first.enqueued + self.max_wait_s
                while self._running and self._compatible(first) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._running:
                    return None
                batch = [j for j in self._pending if isinstance(j, Job) and j.key == first.key]
                batch = [j for j in batch if not j.cancelled.is_set()][: self.max_batch] or [first]
                taken = {id(j) for j in batch}
                self._pending = collections.deque(
                    j for j in self._pending if id(j) not in taken and not _is_cancelled(j)
                )
                return batch

    def _compatible(self, first: Job) -> int:
        return sum(1 for j in self._pending if isinstance(j, Job) and j.key == first.key)

    def _run_batch(self, jobs: list[Job]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.sizes[len(jobs)] += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        try:
            self._generate(jobs)
        except Exception as err:  # a failing batch fails its requests, never the server
            self.stats.failed_batches += 1
            if len(jobs) > 1 and not any(j.answered for j in jobs):
                for job in jobs:  # alone, so that one bad request does not take its batch-mates with it
                    self._run_batch([job])
                return
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            for job in jobs:
                if not job.ended:
                    job.emit(Event("error", f"generation failed: {reason}"))

    def _generate(self, jobs: list[Job]) -> None:
        model = self.model
        batch = collate([j.inputs for j in jobs], model.processor.pad_token_id)
        prompt_tokens = batch["attention_mask"].sum(1).tolist()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        streamer = _BatchStreamer(jobs, self._tokenizer, self._stop_ids, prompt_tokens)
        first = jobs[0].prompt
        with runtime.autocast(self.precision, self.device):
            model.generate(
                **batch,
                max_new_tokens=max(j.prompt.max_tokens for j in jobs),
                do_sample=first.temperature > 0,
                temperature=first.temperature if first.temperature > 0 else 1.0,
                top_p=first.top_p,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_RowsDone(streamer)]),
            )
        streamer.end()  # generate calls it too; a second call finds every row ended


def _is_cancelled(item: Job | _Call) -> bool:
    return isinstance(item, Job) and item.cancelled.is_set()


def _fail(item: Job | _Call, message: str) -> None:
    if isinstance(item, Job):
        item.emit(Event("error", message))
    elif item.future.set_running_or_notify_cancel():
        item.future.set_exception(NotRunning(message))
