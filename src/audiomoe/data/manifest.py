"""Manifests: record schemas, one internal record, line-numbered validation.

Every line of a manifest (JSONL, plain or gzip, or a row of another source format: see
:mod:`audiomoe.data.sources` and :mod:`audiomoe.data.formats`, which also adds the lhotse and NeMo schemas) is one
JSON object in one of these schemas (detected per line):

* **native** (audiomoe):
  ``{"key", "audio", "task", "instruction", "answer", "attributes": {name: value}, "duration", "transcript"}``;
  ``key``, ``audio``, ``task``, ``answer`` are required, the rest optional (also ``start`` for a segment and
  ``metric`` for a task nobody declared).
* **slam** (SLAM-LLM ASR style): ``{"key", "source": path, "target": text}`` (optional ``prompt``, ``task``):
  the task is ``transcribe`` unless given, the target is also the transcript.
* **messages** (ms-swift / LLaMA-Factory style):
  ``{"messages": [{"role": "user", "content": "<audio>question"}, {"role": "assistant", "content": "answer"}],
  "audios": [path]}``: an optional system message, then user / assistant turns ending with the assistant, one
  ``<audio>`` tag per audio in order; optional ``key``/``id``, ``task``, ``attributes``, ``duration``. Without
  ``task`` the task is the one whose paraphrase matches the last question, else ``audio_qa``. A record with a
  system prompt, several turns or several audios keeps the whole conversation (``messages``, ``audios``).

A task nobody declared is an open task (:func:`audiomoe.data.tasks.declare_open_task`), never an error.
Every schema becomes an :class:`AudioRecord`. Relative audio paths are resolved against the manifest's folder.

``read_manifest(path, on_error="fail")`` raises :class:`ManifestError` at the first bad line
(``path:line: reason``); ``on_error="skip"`` drops bad lines and prints a counted summary to stderr (never a
silent skip; :func:`load_manifest` returns the problems too). ``validate_manifest(path)`` checks every line,
including that the audio decodes and that a stated duration matches, and returns every problem.

The same rules hold wherever a manifest is read (validate, train, eval): a line must be UTF-8 JSON without
duplicate keys, its instruction and answer at most ``max_text_chars`` characters (a longer one would only run out
of memory in training), and the file must hold at least one line. Long clips are accepted everywhere: the encoder
splits them into its windows (``processor.long_audio``), and ``validate`` notes how many there are.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from audiomoe.data.audio import AudioError, audio_info, load_audio
from audiomoe.data.sources import Item, Source, as_source, detect_format, iter_items
from audiomoe.data.tasks import declare_open_task, find_task_by_instruction

AUDIO_TAG = "<audio>"
DURATION_TOLERANCE = 0.05  # seconds; a stated duration further off than this (and 2%) is a problem
# Longest instruction / answer in characters: a transcript of several minutes of speech fits; megabytes do not.
MAX_TEXT_CHARS = 10_000
ENCODER_WINDOW = 30.0  # seconds (Whisper): longer clips are encoded in windows


class ManifestError(ValueError):
    """A manifest line is unusable; the message is ``path:line: reason``."""


@dataclass
class AudioRecord:
    """One training / evaluation example.

    Attributes:
        key: unique id of the example.
        audio: path of the audio file (absolute, or as written when the manifest is read with resolve off).
        task: a name in ``audiomoe.data.tasks.TASKS``.
        instruction: the question put to the model (text, no audio tag).
        answer: the reference answer.
        attributes: known facts about the clip as strings, e.g. ``{"category": "speech", "gender": "female"}``.
            The built-in corpus always sets ``category`` (speech | music | sound | mixture).
        duration: seconds, or None if unknown.
        transcript: the clip's spoken content as text where it exists (used for the modality-gap evaluation:
            the same question asked with the transcript instead of the audio).
        start: for a segment of a longer file (lhotse cuts, NeMo offsets), its start in seconds; the segment
            lasts ``duration`` (to the end of the file when None). None = the whole file.
        messages: the whole conversation of a messages record with a system prompt, several turns or several
            audios (``<audio>`` tags in place; training puts the loss on every assistant turn); None otherwise.
        audios: every audio of such a record in tag order (``audio`` is the first); None otherwise.
    """

    key: str
    audio: str
    task: str
    instruction: str
    answer: str
    attributes: dict[str, str] = field(default_factory=dict)
    duration: float | None = None
    transcript: str | None = None
    start: float | None = None
    messages: list[dict[str, str]] | None = None
    audios: list[str] | None = None

    @property
    def paths(self) -> list[str]:
        """Every audio file of the record, in ``<audio>``-tag order."""
        return list(self.audios) if self.audios else [self.audio]

    def to_json(self) -> str:
        """One native-schema JSON line (keys in a fixed order so equal records give equal bytes)."""
        data = dataclasses.asdict(self)
        for optional in ("transcript", "start", "messages", "audios"):
            if data[optional] is None:
                del data[optional]
        data["attributes"] = dict(sorted(data["attributes"].items()))
        return json.dumps(data, ensure_ascii=False)


@dataclass(frozen=True)
class ManifestProblem:
    """One bad line: ``str()`` gives ``path:line: reason``."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ManifestLoad:
    """Records read from a manifest plus the problems of the lines that were skipped."""

    path: str
    records: list[AudioRecord]
    problems: list[ManifestProblem]
    total_lines: int
    lines: list[int] = field(default_factory=list)  # the manifest line of each record

    def summary(self, show: int = 5) -> str:
        lines = [
            f"{self.path}: kept {len(self.records)} of {self.total_lines} lines, skipped {len(self.problems)}"
        ]
        lines += [f"  {p}" for p in self.problems[:show]]
        if len(self.problems) > show:
            lines.append(
                f"  ... and {len(self.problems) - show} more (run `audiomoe data validate {self.path}`)"
            )
        return "\n".join(lines)


def _need_str(obj: dict[str, Any], key: str, schema: str, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise ManifestError(f"{schema} schema: '{key}' must be a non-empty string, got {value!r}")
    return value


def _attributes(obj: dict[str, Any]) -> dict[str, str]:
    attrs = obj.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise ManifestError(f"'attributes' must be an object of name: value, got {attrs!r}")
    return {str(k): str(v) for k, v in attrs.items()}


def _duration(obj: dict[str, Any]) -> float | None:
    value = obj.get("duration")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ManifestError(f"'duration' must be a positive number of seconds, got {value!r}")
    return float(value)


def _start(obj: dict[str, Any]) -> float | None:
    value = obj.get("start")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ManifestError(f"'start' must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _parse_native(obj: dict[str, Any], line: int) -> AudioRecord:
    task = declare_open_task(_need_str(obj, "task", "native"), obj.get("metric")).name
    answer = _need_str(obj, "answer", "native")
    transcript = _need_str(obj, "transcript", "native", optional=True)
    if transcript is None and task == "transcribe":
        transcript = answer
    instruction = (
        _need_str(obj, "instruction", "native", optional=True) or declare_open_task(task, None).instruction()
    )
    return AudioRecord(
        key=_need_str(obj, "key", "native"),
        audio=_need_str(obj, "audio", "native"),
        task=task,
        instruction=instruction,
        answer=answer,
        attributes=_attributes(obj),
        duration=_duration(obj),
        transcript=transcript,
        start=_start(obj),
    )


def _task_name(obj: dict[str, Any], schema: str, default: str | None) -> str | None:
    """The name of the line's ``task`` (or ``default`` when absent / empty); a task nobody declared is an open
    task."""
    value = obj.get("task")
    if value in (None, ""):
        return declare_open_task(default, obj.get("metric")).name if default else None
    if not isinstance(value, str):
        raise ManifestError(f"{schema} schema: 'task' must be a task name (a string), got {value!r}")
    return declare_open_task(value, obj.get("metric")).name


def _parse_slam(obj: dict[str, Any], line: int) -> AudioRecord:
    task = _task_name(obj, "slam", "transcribe")
    target = _need_str(obj, "target", "slam")
    prompt = _need_str(obj, "prompt", "slam", optional=True)
    return AudioRecord(
        key=_need_str(obj, "key", "slam"),
        audio=_need_str(obj, "source", "slam"),
        task=task,
        instruction=(prompt or declare_open_task(task, None).instruction()).replace(AUDIO_TAG, "").strip(),
        answer=target,
        attributes=_attributes(obj),
        duration=_duration(obj),
        transcript=target if task == "transcribe" else _need_str(obj, "transcript", "slam", optional=True),
    )


ROLES = ("system", "user", "assistant")


def _parse_messages(obj: dict[str, Any], line: int) -> AudioRecord:
    """One or more turns: an optional system message first, then user / assistant turns ending with the
    assistant; one ``<audio>`` tag per entry of ``audios``, in order, anywhere in the user turns."""
    messages, audios = obj.get("messages"), obj.get("audios")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
    ):
        raise ManifestError("messages schema: 'messages' must be a list of {role, content} objects "
                            f"(role one of {', '.join(ROLES)}, content a string)")  # fmt: skip
    if not isinstance(audios, list) or not audios or not all(isinstance(a, str) and a for a in audios):
        raise ManifestError(f"messages schema: 'audios' must be a list of one or more paths, got {audios!r}")
    tags = sum(m["content"].count(AUDIO_TAG) for m in messages)
    if tags != len(audios):
        raise ManifestError(
            f"messages schema: the messages hold {tags} {AUDIO_TAG} tag(s) for {len(audios)} audio(s); "
            f"write exactly one {AUDIO_TAG} per audio, in order"
        )
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    roles = [m["role"] for m in turns]
    if (
        not roles
        or roles[0] != "user"
        or roles[-1] != "assistant"
        or any(a == b for a, b in zip(roles, roles[1:]))
    ):
        raise ManifestError(
            "messages schema: after an optional system message, user and assistant turns alternate, starting "
            "with a user turn and ending with an assistant turn"
        )
    question, answer = turns[-2]["content"], turns[-1]["content"]
    if not answer.strip():
        raise ManifestError("messages schema: the assistant message must be a non-empty string")
    instruction = question.replace(AUDIO_TAG, "").strip()
    task = _task_name(obj, "messages", None)
    if task is None:
        found = find_task_by_instruction(instruction)
        task = found.name if found else "audio_qa"
    single = len(messages) == 2 and len(audios) == 1 and question.count(AUDIO_TAG) == 1
    key = obj.get("key", obj.get("id"))
    if key is not None and not isinstance(key, (str, int)) or isinstance(key, bool):
        raise ManifestError(f"messages schema: 'key' / 'id' must be a string or an integer, got {key!r}")
    return AudioRecord(
        key=str(key) if key is not None else f"line{line}",
        audio=audios[0],
        task=task,
        instruction=instruction,
        answer=answer,
        attributes=_attributes(obj),
        duration=_duration(obj),
        transcript=_need_str(obj, "transcript", "messages", optional=True)
        or (answer if task == "transcribe" else None),
        messages=None if single else [{"role": m["role"], "content": m["content"]} for m in messages],
        audios=None if single else list(audios),
    )


# Schema registry: a line belongs to the first schema whose marker keys it has.
SCHEMAS: dict[str, tuple[tuple[str, ...], Any]] = {
    "messages": (("messages", "audios"), _parse_messages),
    "slam": (("source", "target"), _parse_slam),
    "native": (("audio", "task"), _parse_native),
}


def register_schema(name: str, markers: tuple[str, ...]) -> Callable[[Any], Any]:
    """Decorator registering ``parse(obj: dict, line: int) -> AudioRecord`` as the manifest schema ``name``: a line
    whose keys include every one of ``markers`` is parsed by it. Registered schemas are tried before the built-in
    ones, so a user's format may share a marker key with them. (A plugin module is the place for this.)"""
    if not markers:
        raise ValueError(f"schema {name!r}: give at least one marker key")

    def add(parse: Any) -> Any:
        # in place and in front: the dict keeps its identity for whoever imported it
        rest = {k: v for k, v in SCHEMAS.items() if k != name}
        SCHEMAS.clear()
        SCHEMAS.update({name: (tuple(markers), parse), **rest})
        return parse

    return add


def detect_schema(obj: dict[str, Any]) -> str:
    for name, (markers, _) in SCHEMAS.items():
        if all(k in obj for k in markers):
            return name
    known = "; ".join(f"{name} {{{', '.join(markers)}, ...}}" for name, (markers, _) in SCHEMAS.items())
    raise ManifestError(f"unknown schema (keys {sorted(obj)}); expected one of: {known}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ManifestError(f"duplicate JSON key {key!r} in one object (which value is meant?); keep one")
        seen[key] = value
    return seen


def _check_lengths(record: AudioRecord, max_text_chars: int) -> None:
    for name in ("instruction", "answer"):
        size = len(getattr(record, name))
        if size > max_text_chars:
            raise ManifestError(
                f"'{name}' has {size} characters, more than the limit of {max_text_chars}; shorten it, or raise "
                "the limit (data.max_text_chars)"
            )


def parse_line(
    text: Item | bytes, line: int, base_dir: Path | None = None, max_text_chars: int = MAX_TEXT_CHARS
) -> AudioRecord:
    """Parse one manifest line (text or raw bytes) or already decoded row (any schema); ``base_dir`` resolves
    relative audio paths. Raises ManifestError."""
    if isinstance(text, bytes):
        text = _decode(text)
    try:
        obj = (
            json.loads(text.rstrip("\r\n"), object_pairs_hook=_no_duplicate_keys)
            if isinstance(text, str)
            else text
        )
    except json.JSONDecodeError as err:
        raise ManifestError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise ManifestError("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        record = SCHEMAS[detect_schema(obj)][1](obj, line)
    except ManifestError:
        raise
    except ValueError as err:  # unknown task and other value errors from helpers
        raise ManifestError(str(err)) from None
    _check_lengths(record, max_text_chars)
    if base_dir is not None:
        resolved = [p if Path(p).is_absolute() else str(base_dir / p) for p in record.paths]
        record.audio = resolved[0]
        if record.audios is not None:
            record.audios = resolved
    return record


def _iter_lines(source: Source) -> Iterable[tuple[int, Item | bytes]]:
    """Numbered items of any source format (:mod:`audiomoe.data.sources`): JSONL(.gz) lines as raw bytes (decoded
    one by one by :func:`parse_line`, so a line that is not UTF-8 is reported with its number and the lines after
    it are still read), dataset rows as mappings. A truncated or corrupt gzip stream is a ManifestError."""
    try:
        yield from iter_items(source)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ManifestError(
            f"{source.path}: the gzip data is truncated or corrupt ({err}); re-compress the manifest "
            f"(`gzip -t {source.path}` checks it)"
        ) from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(
            f"not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); re-save the file as UTF-8"
        ) from None


def check_readable(path: Path, what: str = "manifest") -> None:
    """Raise ``FileNotFoundError`` / ``PermissionError`` / ``IsADirectoryError`` with a message that says which.
    A directory in a format of :data:`audiomoe.data.sources.FORMATS` (a ``save_to_disk`` dataset) is readable."""
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise FileNotFoundError(
                    f"{what} {path} is a symlink loop; point the link at a real file"
                ) from None
        raise FileNotFoundError(f"{what} {path} is a dangling symlink (to {os.readlink(path)})")
    if (path.is_dir() or not path.exists()) and detect_format(path) != "jsonl":
        return  # a dataset directory, or a glob of shards
    if path.is_dir():
        raise IsADirectoryError(
            f"{what} {path} is a directory, not a file nor a dataset this version reads (a datasets.save_to_disk "
            "directory holds state.json); give the .jsonl file inside it, a save_to_disk directory, a parquet or "
            "an arrow file"
        )
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path} is not readable (permission denied); fix its permissions")


def load_record_audio(record: AudioRecord, sampling_rate: int = 16000) -> Any:
    """The record's clip (its segment for cuts / offsets) as mono float32 ``(T,)`` at ``sampling_rate``."""
    if record.start is None:
        return load_audio(record.audio, sampling_rate)
    return load_audio(record.audio, sampling_rate, start=record.start, duration=record.duration)


def load_record_clips(record: AudioRecord, sampling_rate: int = 16000) -> list[Any]:
    """Every clip of the record in tag order (one for most records), each ``(T,)`` float32."""
    if record.audios:
        return [load_audio(path, sampling_rate) for path in record.audios]
    return [load_record_audio(record, sampling_rate)]


def load_manifest(
    path: str | Path | Source,
    on_error: Literal["fail", "skip"] = "fail",
    check_files: bool = True,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> ManifestLoad:
    """Parse every line; ``check_files`` also requires each audio file to exist (cheap, no decoding).

    ``on_error="fail"`` raises ManifestError at the first bad line; ``"skip"`` collects the problems.
    Duplicate keys are problems too (analysis and resumption index records by key).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    source = as_source(path)
    path = Path(source.path)
    check_readable(path)
    records: list[AudioRecord] = []
    numbers: list[int] = []
    problems: list[ManifestProblem] = []
    seen: dict[str, int] = {}
    total = 0
    for number, raw in _iter_lines(source):
        total += 1
        try:
            record = parse_line(raw, number, path.parent, max_text_chars)
            if record.key in seen:
                raise ManifestError(f"duplicate key {record.key!r} (first on line {seen[record.key]})")
            if check_files:
                for audio in record.paths:
                    _check_audio_path(Path(audio))
        except ManifestError as err:
            problem = ManifestProblem(str(path), number, str(err))
            if on_error == "fail":
                raise ManifestError(f"{problem} (use on_error='skip' to drop bad lines)") from None
            problems.append(problem)
            continue
        seen[record.key] = number
        records.append(record)
        numbers.append(number)
    if total == 0:
        raise ManifestError(f"{path}: the manifest is empty (no lines); add one JSON object per line")
    return ManifestLoad(str(path), records, problems, total, numbers)


def _check_audio_path(audio: Path) -> None:
    if audio.is_file():
        return
    if audio.is_dir():
        raise ManifestError(f"audio {audio} is a directory, not an audio file")
    if audio.is_symlink():
        raise ManifestError(f"audio file {audio} is a dangling symlink or a symlink loop")
    raise ManifestError(f"audio file {audio} not found")


def read_manifest(
    path: str | Path | Source, on_error: Literal["fail", "skip"] = "fail", check_files: bool = True
) -> list[AudioRecord]:
    """Records of a manifest (any of the three schemas). In skip mode, a summary of dropped lines goes to stderr."""
    loaded = load_manifest(path, on_error, check_files)
    if loaded.problems:
        print(loaded.summary(), file=sys.stderr)
    return loaded.records


def write_manifest(records: Iterable[AudioRecord], path: str | Path, relative: bool = True) -> int:
    """Write native-schema JSONL (gzip when ``path`` ends in .gz); with ``relative`` audio paths under the manifest's folder are stored relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    count = 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            audio = Path(record.audio)
            if relative and audio.is_absolute() and audio.resolve().is_relative_to(base):
                record = dataclasses.replace(record, audio=audio.resolve().relative_to(base).as_posix())
            f.write(record.to_json() + "\n")
            count += 1
    return count


def validate_manifest(
    path: str | Path | Source,
    check_audio: bool = True,
    max_duration: float | None = None,
    sampling_rate: int = 16000,
    max_text_chars: int = MAX_TEXT_CHARS,
    notes: list[str] | None = None,
) -> list[ManifestProblem]:
    """Every problem of every line: JSON, schema, task, duplicate key, text length, file exists, decodes, duration.

    ``check_audio`` decodes each file (catches empty, silent, NaN, truncated, undecodable) and compares a stated
    duration with the real one; ``max_duration`` (None: no limit, as in training and evaluation) flags longer
    clips. Clips longer than the encoder window are accepted (encoded in windows) and counted in ``notes``.
    """
    source = as_source(path)
    path = Path(source.path)
    try:
        loaded = load_manifest(source, on_error="skip", check_files=True, max_text_chars=max_text_chars)
    except (OSError, ManifestError) as err:  # missing, directory, unreadable, empty: the file itself
        return [ManifestProblem(str(path), 0, str(err))]
    problems = list(loaded.problems)
    windowed = 0
    if check_audio:
        for number, record in zip(loaded.lines, loaded.records):
            try:
                info = audio_info(record.audio)
                load_record_clips(record, sampling_rate)
            except AudioError as err:
                problems.append(ManifestProblem(str(path), number, str(err)))
                continue
            if record.audios:
                continue  # several clips: a stated duration is their sum, not checked against one file
            real = info.duration - (record.start or 0.0)
            if (
                record.start is not None
                and record.duration is not None
                and record.duration <= real + DURATION_TOLERANCE
            ):
                real = record.duration  # a segment inside the file: its stated length is what is used
            if record.duration is not None and abs(real - record.duration) > max(
                DURATION_TOLERANCE, 0.02 * real
            ):
                problems.append(
                    ManifestProblem(
                        str(path),
                        number,
                        f"duration says {record.duration:.3f} s but the audio lasts {real:.3f} s",
                    )
                )
            if max_duration is not None and real > max_duration:
                problems.append(
                    ManifestProblem(
                        str(path), number, f"audio lasts {real:.1f} s, more than {max_duration:.0f} s"
                    )
                )
            elif real > ENCODER_WINDOW:
                windowed += 1
    if windowed and notes is not None:
        notes.append(
            f"{path}: note: {windowed} clip(s) longer than {ENCODER_WINDOW:.0f} s are encoded in "
            f"{ENCODER_WINDOW:.0f} s windows (processor.long_audio=split), as in training and evaluation"
        )
    return sorted(problems, key=lambda p: p.line)
