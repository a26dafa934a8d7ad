"""The field's dataset formats, as registry entries of :data:`audiomoe.data.sources.FORMATS` (how a path is read)
and :data:`audiomoe.data.manifest.SCHEMAS` (how one object becomes a record).

Formats (``pip install audiomoe[formats]`` for the first three):

* ``hf_disk``: a Hugging Face ``datasets`` directory written by ``Dataset.save_to_disk`` (a ``DatasetDict``
  directory is refused with its split names: give ``DIR/train``);
* ``parquet`` / ``arrow``: one ``*.parquet`` or ``*.arrow`` file, read with ``datasets``.
  Rows are records in any schema. A column of the ``datasets.Audio`` type is read undecoded: its ``path`` is used
  when the file exists (relative to the dataset's folder), else its embedded ``bytes`` are written once to
  ``$AUDIOMOE_CACHE/audio`` (default ``~/.cache/audiomoe/audio``, named by content hash). ``Source.columns`` maps
  native fields to columns (``{audio: wav, answer: label}``); ``Source.task`` fills a missing ``task``.

Schemas (JSONL lines or rows, plain or gzip):

* ``lhotse``: a lhotse ``CutSet`` manifest line (``MonoCut`` with its ``recording`` and ``supervisions``), parsed
  by lhotse itself; the cut's ``start`` / ``duration`` select the segment that is decoded. The answer is the
  cut's ``custom.answer`` else the supervision texts; the task is ``custom.task`` (cut or first supervision) else
  ``transcribe``; speaker, gender and language become attributes.
* ``nemo``: a NeMo ASR manifest line ``{audio_filepath, text, duration[, offset, lang]}``; ``offset`` makes
  it a segment. The task is ``transcribe`` unless the line names one (``task`` or ``taskname``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audiomoe.data.manifest import AUDIO_TAG, AudioRecord, ManifestError, register_schema
from audiomoe.data.sources import Item, Source, register_format
from audiomoe.data.tasks import declare_open_task

FORMATS_EXTRA = "pip install 'audiomoe[formats]' (datasets, lhotse)"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"reading Hugging Face datasets needs the datasets package: {FORMATS_EXTRA}"
        ) from None
    return datasets


def audio_cache_dir() -> Path:
    return Path(os.environ.get("AUDIOMOE_CACHE", Path.home() / ".cache" / "audiomoe")) / "audio"


def _audio_value(value: Any, base: Path) -> Any:
    """An ``Audio`` cell (``{path, bytes}``) -> a path that exists: the stated path, else the bytes on disk."""
    if not isinstance(value, dict):
        return value
    path, data = value.get("path"), value.get("bytes")
    if path and (Path(path).is_file() or (base / path).is_file()):
        return path
    if data:
        return cache_audio_bytes(data, (Path(path).suffix if path else "") or ".wav")
    return path or value


def cache_audio_bytes(data: bytes, suffix: str) -> str:
    """Embedded audio bytes as a file of the audio cache (named by content hash, written once)."""
    digest = hashlib.sha1(data).hexdigest()
    target = audio_cache_dir() / digest[:2] / f"{digest}{suffix}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return str(target)


def _rows(dataset: Any, path: Path, source: Source) -> Iterator[tuple[int, Item]]:
    datasets = _datasets()
    missing = [c for c in source.columns.values() if c not in dataset.column_names]
    if missing:
        raise ManifestError(
            f"{path}: column {missing[0]!r} of the column mapping is not in the dataset "
            f"(columns: {', '.join(dataset.column_names)})"
        )
    audio_columns = [n for n, f in dataset.features.items() if isinstance(f, datasets.Audio)]
    for name in audio_columns:
        dataset = dataset.cast_column(name, datasets.Audio(decode=False))
    renamed = {column: native for native, column in source.columns.items()}
    for index, row in enumerate(dataset):
        item = {renamed.get(k, k): v for k, v in row.items()}
        for column in audio_columns:
            key = renamed.get(column, column)
            item[key] = _audio_value(item[key], path.parent)
        yield index + 1, item


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


@register_format("hf_disk", _is_hf_dir)
def read_hf_disk(path: Path, source: Source) -> Iterator[tuple[int, Item]]:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{path} is a DatasetDict with splits {splits}; give one, e.g. {path / splits[0]}"
        )
    yield from _rows(_datasets().load_from_disk(str(path)), path, source)


@register_format("parquet", lambda p: p.is_file() and p.suffix == ".parquet")
def read_parquet(path: Path, source: Source) -> Iterator[tuple[int, Item]]:
    yield from _rows(_datasets().Dataset.from_parquet(str(path)), path, source)


@register_format("arrow", lambda p: p.is_file() and p.suffix == ".arrow")
def read_arrow(path: Path, source: Source) -> Iterator[tuple[int, Item]]:
    yield from _rows(_datasets().Dataset.from_file(str(path)), path, source)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _record(
    obj: dict[str, Any], key: str, audio: str, task_name: str | None, answer: str, **extra: Any
) -> AudioRecord:
    """The record of a lhotse / NeMo line: task (declared or open), instruction (given or the task's first)."""
    task = declare_open_task(task_name or "transcribe", obj.get("metric"))
    instruction = str(obj.get("instruction") or task.instruction()).replace(AUDIO_TAG, "").strip()
    transcript = extra.pop("transcript", None)
    return AudioRecord(
        key=key, audio=audio, task=task.name, instruction=instruction, answer=answer,
        transcript=transcript if transcript is not None else (answer if task.name == "transcribe" else None),
        **extra,
    )  # fmt: skip


@register_schema("lhotse", ("recording", "supervisions"))
def parse_lhotse_cut(obj: dict[str, Any], line: int) -> AudioRecord:
    try:
        from lhotse.serialization import deserialize_item
    except ImportError:
        raise ManifestError(f"reading lhotse cuts needs lhotse: {FORMATS_EXTRA}") from None
    try:
        cut = deserialize_item(obj)
    except Exception as err:  # lhotse raises a variety of types for a malformed cut
        raise ManifestError(f"lhotse schema: not a valid cut ({type(err).__name__}: {err})") from None
    recording = getattr(cut, "recording", None)
    if recording is None or len(recording.sources) != 1 or recording.sources[0].type != "file":
        raise ManifestError(
            "lhotse schema: the cut needs a recording with one audio file source (type 'file')"
        )
    sups = list(cut.supervisions)
    custom = {**(sups[0].custom or {} if sups else {}), **(cut.custom or {})}
    text = " ".join(s.text for s in sups if s.text)
    answer = _text(
        custom.get("answer", text), "lhotse schema: the answer (custom.answer or supervision text)"
    )
    attributes = {str(k): str(v) for k, v in (custom.get("attributes") or {}).items()}
    for name in ("speaker", "gender", "language"):
        value = getattr(sups[0], name, None) if sups else None
        if value:
            attributes.setdefault(name, str(value))
    fields = {k: custom[k] for k in ("instruction", "metric") if k in custom}
    return _record(
        fields, str(cut.id), str(recording.sources[0].source), custom.get("task"), answer,
        attributes=attributes, duration=float(cut.duration), start=float(cut.start),
        transcript=text or None,
    )  # fmt: skip


@register_schema("nemo", ("audio_filepath",))
def parse_nemo(obj: dict[str, Any], line: int) -> AudioRecord:
    audio = _text(obj.get("audio_filepath"), "nemo schema: 'audio_filepath'")
    answer = _text(obj.get("answer", obj.get("text")), "nemo schema: 'text'")
    duration = obj.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0
    ):
        raise ManifestError(f"nemo schema: 'duration' must be a positive number of seconds, got {duration!r}")
    offset = obj.get("offset")
    attributes = {str(k): str(v) for k, v in (obj.get("attributes") or {}).items()}
    language = obj.get("lang", obj.get("source_lang"))
    if language:
        attributes.setdefault("language", str(language))
    key = obj.get("key", obj.get("id", f"{Path(audio).stem}-{line}" if offset else Path(audio).stem))
    return _record(
        obj, str(key), audio, obj.get("task") or obj.get("taskname"), answer, attributes=attributes,
        duration=float(duration) if duration is not None else None,
        start=float(offset) if offset is not None else None,
    )  # fmt: skip
