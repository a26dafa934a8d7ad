"""Data: manifests (three schemas, one record), audio I/O, task registry, bucketed sampler, built-in corpus.

Modules:
    manifest: ``AudioRecord``, ``read_manifest``, ``write_manifest``, ``validate_manifest``, ``ManifestError``.
    audio: ``load_audio`` (soundfile + soxr, mono float32) and ``AudioError``.
    tasks: ``TASKS`` registry of ``Task`` (instructions, normalisation, metric, labels).
    sampler: ``BucketBatchSampler`` (duration buckets, seed + epoch, rank shards, resumable), ``padding_fraction``.
    corpus: ``build_corpus`` (speech via espeak-ng, music and sounds in numpy, mixtures), ``CorpusSummary``.
    importers: ``import_folder`` (labels from file names or a CSV).
    sources: ``Source`` (path, weight, columns, task) and the ``FORMATS`` registry (JSONL / JSONL.gz fallback).
    formats: the field's formats as registry entries (datasets save_to_disk / parquet / arrow; lhotse cuts and
        NeMo manifests as schemas), registered when this package is imported.
    shards: WebDataset-style tar shards (``write_shards``, ``list_shards``, the ``shards`` format).
"""

from audiomoe.data import (
    formats,  # noqa: F401  (registers the formats and schemas)
    shards,  # noqa: F401  (registers the tar shard format)
)
from audiomoe.data.audio import AudioError, load_audio
from audiomoe.data.manifest import (
    AudioRecord,
    ManifestError,
    ManifestProblem,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from audiomoe.data.sampler import BucketBatchSampler, padding_fraction
from audiomoe.data.sources import Source
from audiomoe.data.tasks import TASK_GROUPS, TASKS, Task, get_task

__all__ = [
    "TASKS",
    "TASK_GROUPS",
    "AudioError",
    "AudioRecord",
    "BucketBatchSampler",
    "ManifestError",
    "ManifestProblem",
    "Source",
    "Task",
    "get_task",
    "load_audio",
    "padding_fraction",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]
