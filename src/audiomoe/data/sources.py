"""Data sources: how a ``data.train`` / ``data.dev`` / ``--manifest`` entry becomes numbered JSON objects.

A source is a path, or a :class:`Source` mapping with a mixing ``weight``, a column mapping and a default task:

    data:
      train:
        - corpus/train.jsonl.gz                                   # JSONL, gzip or not, any registered schema
        - {path: hf/emotion, weight: 2}                           # a datasets.save_to_disk directory
        - {path: clips.parquet, columns: {audio: wav, answer: label}, task: emotion}

``FORMATS`` maps a format name to ``(detect(path) -> bool, read(path, source) -> iterator of (number, item))``
where an item is a JSON text line or an already decoded mapping; the manifest schemas
(:data:`audiomoe.data.manifest.SCHEMAS`) then turn each item into a record, so a new file format and a new
record schema are independent registry entries. JSONL (plain or gzip, detected by content) is the fallback; the
Hugging Face ``datasets`` formats are registered by :mod:`audiomoe.data.formats`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Item = str | dict[str, Any]
Reader = Callable[[Path, "Source"], Iterator[tuple[int, Item]]]
Detect = Callable[[Path], bool]
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Source:
    """One entry of ``data.train`` / ``data.dev``.

    Attributes:
        path: a JSONL(.gz) manifest, a ``save_to_disk`` directory, a parquet or arrow file.
        weight: mixing weight: each epoch draws ``weight`` times this source's records (fractions sample a
            subset, seeded per epoch); 1 = every record once.
        columns: tabular formats: native field -> column name (``{audio: path, answer: label}``).
        task: the task of records that name none.
        format: a registered format name (``shards``) when detection should not decide.
    """

    path: str
    weight: float = 1.0
    columns: dict[str, str] = field(default_factory=dict)
    task: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"source {self.path}: weight must be > 0, got {self.weight}")
        if self.format and self.format not in {"jsonl", *FORMATS}:
            raise ValueError(
                f"source {self.path}: format {self.format!r} is not one of {['jsonl', *FORMATS]}"
            )


def as_source(spec: str | Path | Source | dict[str, Any]) -> Source:
    """A path, a :class:`Source` or its mapping -> :class:`Source`."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"path", "weight", "columns", "task", "format"})
        if unknown or "path" not in spec:
            raise ValueError(f"data source {spec!r}: keys are path (required), weight, columns, task, format")
        return Source(**spec)
    return Source(str(spec))


FORMATS: dict[str, tuple[Detect, Reader]] = {}


def register_format(name: str, detect: Detect) -> Callable[[Reader], Reader]:
    """Decorator registering ``read(path, source)`` as the source format ``name`` for paths ``detect`` accepts
    (tried in registration order, before the JSONL fallback)."""

    def add(read: Reader) -> Reader:
        FORMATS[name] = (detect, read)
        return read

    return add


def is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def read_jsonl(path: Path, source: Source) -> Iterator[tuple[int, Item | bytes]]:
    """Non-blank lines of a JSONL or JSONL.gz file with their 1-based line numbers, as raw bytes: the manifest
    parser decodes each line on its own, so a line that is not UTF-8 is a numbered problem, not the end of the
    file."""
    with gzip.open(path, "rb") if is_gzip(path) else path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate JSON key")  # left raw for the manifest parser, which names the key
    return dict(pairs)


def detect_format(path: str | Path) -> str:
    path = Path(path)
    for name, (detect, _) in FORMATS.items():
        if detect(path):
            return name
    return "jsonl"


def iter_items(source: str | Path | Source) -> Iterator[tuple[int, Item | bytes]]:
    """``(number, item)`` of every record of ``source``: line numbers for JSONL (raw bytes), 1-based rows
    otherwise."""
    source = as_source(source)
    path = Path(source.path)
    name = source.format or detect_format(path)
    read = FORMATS[name][1] if name in FORMATS else read_jsonl
    if name == "jsonl" and path.is_dir():
        raise FileNotFoundError(
            f"{path} is a folder but not a dataset this version reads (a datasets.save_to_disk directory holds "
            "state.json); give a JSONL manifest, a save_to_disk directory, a parquet or an arrow file"
        )
    for number, item in read(path, source):
        if isinstance(item, (str, bytes)) and source.task:
            # a bad line (not UTF-8, not JSON, duplicate keys) stays raw: the schema parser reports it
            with contextlib.suppress(ValueError):
                item = json.loads(item, object_pairs_hook=_unique_keys)
        if isinstance(item, dict):
            item = {**item}
            if source.task and not item.get("task"):
                item["task"] = source.task
        yield number, item
