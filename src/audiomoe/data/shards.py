"""WebDataset-style tar shards: corpora too large to list file by file, read as a stream.

A shard is ``PREFIX-000000.tar`` holding, per record, ``KEY.json`` (the native record fields without ``audio``,
the real key included) and ``KEY.wav`` / ``KEY.flac`` (any extension libsndfile reads), next to each other, as
WebDataset writes them (``KEY`` is the member name up to its first dot). Shards are read with Python's
``tarfile`` in streaming mode: the format is that simple, and the ``webdataset`` package would add a dependency
(and its own shuffling and node splitting, which the training stream must control itself to resume exactly).

- :func:`write_shards` writes records (any accepted source) as shards: ``audiomoe data shard IN OUTDIR``.
- :func:`list_shards`: a directory of ``*.tar``, a glob, or one ``.tar`` file -> sorted shard paths.
- :func:`iter_samples`: ``(key, {extension: bytes})`` of one shard, in order.
- The ``shards`` source format (:data:`audiomoe.data.sources.FORMATS`) lists a shard set record by record for
  ``data validate`` / ``convert`` / ``eval --manifest``, extracting each clip once to the audio cache; training
  streams it instead (:mod:`audiomoe.training.streaming`).
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from audiomoe.data.formats import cache_audio_bytes
from audiomoe.data.manifest import AudioRecord, ManifestError
from audiomoe.data.sources import Item, Source, register_format

SHARD_SUFFIX = ".tar"
META = "json"


class ShardError(ManifestError):
    """A shard that cannot be read or written; the message names it."""


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}{SHARD_SUFFIX}"


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def list_shards(path: str | Path) -> list[Path]:
    """The shards of ``path`` (a directory of ``*.tar``, a glob, or one ``.tar`` file), sorted by name."""
    text = str(path)
    if _is_glob(text):
        found = sorted(Path(p) for p in glob.glob(text) if p.endswith(SHARD_SUFFIX))
    elif Path(text).is_dir():
        found = sorted(Path(text).glob(f"*{SHARD_SUFFIX}"))
    else:
        found = [Path(text)] if Path(text).is_file() and text.endswith(SHARD_SUFFIX) else []
    if not found:
        raise ShardError(
            f"{text}: no *{SHARD_SUFFIX} shards found; write them with `audiomoe data shard IN {text}`"
        )
    return found


def is_shards(path: Path) -> bool:
    """Detection for the source registry: a ``.tar`` file, a glob of them, or a folder holding ``*.tar``."""
    text = str(path)
    if _is_glob(text):
        return any(p.endswith(SHARD_SUFFIX) for p in glob.glob(text))
    if path.is_dir():
        return not (path / "state.json").is_file() and any(path.glob(f"*{SHARD_SUFFIX}"))
    return path.suffix == SHARD_SUFFIX and path.is_file()


def _split(name: str) -> tuple[str, str]:
    base = Path(name).name
    key, _, extension = base.partition(".")
    return key, extension.lower()


def iter_samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of ``shard``, in archive order (members of one key adjacent)."""
    key, files = None, {}
    try:
        with tarfile.open(shard, "r|*") as archive:  # streaming: no index, no seeking
            for member in archive:
                if not member.isfile():
                    continue
                name, extension = _split(member.name)
                if name != key and files:
                    yield str(key), files
                    files = {}
                key = name
                handle = archive.extractfile(member)
                files[extension] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ShardError(f"{shard}: not a readable tar shard ({err}); write it again") from None
    if files:
        yield str(key), files


def sample_fields(shard: Path, key: str, files: dict[str, bytes]) -> tuple[dict[str, Any], str, bytes]:
    """The record fields (``KEY.json``), the audio member's extension and its bytes; ShardError if one is missing."""
    where = f"{shard}:{key}"
    if META not in files:
        raise ShardError(f"{where}: no {key}.{META} member (the record fields); write the shard again")
    audio = [ext for ext in files if ext != META]
    if len(audio) != 1:
        raise ShardError(f"{where}: expected one audio member beside {key}.{META}, found {audio or 'none'}")
    try:
        fields = json.loads(files[META])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"{where}.{META}: not valid JSON ({err})") from None
    if not isinstance(fields, dict):
        raise ShardError(f"{where}.{META}: expected a JSON object")
    return fields, audio[0], files[audio[0]]


def _member_key(key: str, index: int) -> str:
    """A member name for ``key``: WebDataset splits names at the first dot, so keys with dots or slashes are
    written by number (the real key stays in the JSON)."""
    return key if key and not any(c in key for c in "./\\") else f"{index:09d}"


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: equal records, equal shards
    archive.addfile(info, io.BytesIO(data))


def write_shards(
    records: Iterable[AudioRecord], out_dir: str | Path, shard_size: int, prefix: str = "shard"
) -> list[Path]:
    """Write ``records`` as shards of ``shard_size`` records each into ``out_dir``; returns their paths.

    Each shard is written to a temporary name and renamed, so a shard that exists is complete. Records with
    several audios are refused (one audio member per sample)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stream = iter(enumerate(records))
    while chunk := list(itertools.islice(stream, shard_size)):
        target = out / shard_name(prefix, len(written))
        tmp = target.with_suffix(f".tar.{os.getpid()}.tmp")
        with tarfile.open(tmp, "w") as archive:
            for index, record in chunk:
                _add_record(archive, record, index)
        tmp.replace(target)
        written.append(target)
    return written


def _add_record(archive: tarfile.TarFile, record: AudioRecord, index: int) -> None:
    if record.audios and len(record.audios) > 1:
        raise ShardError(
            f"record {record.key!r}: shards hold one audio per record, it has {len(record.audios)}"
        )
    fields = json.loads(record.to_json())
    fields.pop("audio", None)
    fields.pop("audios", None)
    extension = Path(record.audio).suffix.lstrip(".").lower() or "wav"
    member = _member_key(record.key, index)
    _add(archive, f"{member}.{META}", json.dumps(fields, ensure_ascii=False).encode())
    _add(archive, f"{member}.{extension}", Path(record.audio).read_bytes())


@register_format("shards", is_shards)
def read_shards(path: Path, source: Source) -> Iterator[tuple[int, Item]]:
    """Every record of a shard set, numbered from 1 across shards, its clip extracted to the audio cache (for
    validation, conversion and evaluation; training streams shards without extracting)."""
    number = 0
    for shard in list_shards(path):
        for key, files in iter_samples(shard):
            number += 1
            fields, extension, data = sample_fields(shard, key, files)
            yield number, {**fields, "audio": cache_audio_bytes(data, f".{extension}")}
