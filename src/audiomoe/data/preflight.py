"""Decode every clip a run will read before its first step, so a broken clip never costs a run.

    kept = preflight([load_manifest("train.jsonl"), load_manifest("dev.jsonl")], on_bad_line="fail")

Each clip is decoded in full (header, truncation, empty, NaN/inf, silence: :func:`audiomoe.data.audio.load_audio`)
in a thread pool; libsndfile and soxr release the GIL, so threads scale. A clip that decoded once is remembered by
the sha256 of its bytes in a small JSON cache (``AUDIOMOE_PREFLIGHT_CACHE``, default
``~/.cache/audiomoe/preflight.json``), so a rerun, a resume or another run on the same data only hashes files.

``on_bad_line="fail"`` raises :class:`~audiomoe.data.manifest.ManifestError` naming the first bad clip's manifest
line; ``"skip"`` drops the bad clips and prints one counted line per manifest (never a silent skip).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from audiomoe.data.audio import AudioError, audio_info, load_audio
from audiomoe.data.manifest import AudioRecord, ManifestError, ManifestLoad, ManifestProblem

CACHE_ENV = "AUDIOMOE_PREFLIGHT_CACHE"


def default_cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "audiomoe" / "preflight.json")


@dataclass
class PreflightReport:
    """What the pass found: the usable records per manifest, the bad clips, and how many files were decoded now
    (``decoded``) or known good (``cached``)."""

    records: list[list[AudioRecord]]
    problems: list[ManifestProblem] = field(default_factory=list)
    decoded: int = 0
    cached: int = 0

    @property
    def skipped(self) -> int:
        return len(self.problems)


def _content_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: str, known: dict[str, float]) -> tuple[str | None, float | None, str | None]:
    """``(content hash, duration, problem)``; decodes only clips whose content is not known to be good."""
    try:
        digest = _content_hash(path)
    except OSError as err:
        return None, None, f"{path}: cannot read ({err.strerror or err}); check the file and its permissions"
    if digest in known:
        return digest, None, None
    try:
        wave = load_audio(path, audio_info(path).sampling_rate)
    except AudioError as err:
        return digest, None, str(err)
    return digest, len(wave) / max(1, audio_info(path).sampling_rate), None


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: the cache only saves time, it is rebuilt
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, known: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)  # atomic: concurrent runs never read half a cache
    except OSError as err:
        print(f"warning: preflight cache {path} not written ({err.strerror or err})", file=sys.stderr)


def preflight(
    loads: list[ManifestLoad],
    on_bad_line: Literal["fail", "skip"] = "fail",
    cache_path: Path | None = None,
    workers: int | None = None,
) -> PreflightReport:
    """Decode every clip of ``loads`` (manifests read by :func:`~audiomoe.data.manifest.load_manifest`)."""
    cache_path = cache_path or default_cache_path()
    known = _read_cache(cache_path)
    jobs = [(i, j, rec) for i, load in enumerate(loads) for j, rec in enumerate(load.records)]
    # every file of every record (several for a multi-audio record), each decoded once: segments of one long
    # file (lhotse cuts, NeMo offsets) share it, and decoding the whole file checks every segment's bytes
    paths = list(dict.fromkeys(path for _, _, record in jobs for path in record.paths))
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = dict(zip(paths, pool.map(lambda path: _check(path, known), paths)))
    report = PreflightReport(records=[[] for _ in loads])
    for digest, duration, problem in checked.values():
        if problem is None:
            if duration is None:
                report.cached += 1
            else:
                report.decoded += 1
                known[digest] = round(duration, 4)
    for i, j, record in jobs:
        problem = next((checked[p][2] for p in record.paths if checked[p][2] is not None), None)
        if problem is None:
            report.records[i].append(record)
            continue
        load = loads[i]
        report.problems.append(ManifestProblem(load.path, load.lines[j] if load.lines else 0, problem))
    if report.decoded:
        _write_cache(cache_path, known)  # first: the good clips need not be decoded again after a fix
    if report.problems and on_bad_line == "fail":
        first = min(report.problems, key=lambda p: (p.path, p.line))
        more = f" ({len(report.problems) - 1} more bad clips)" if len(report.problems) > 1 else ""
        raise ManifestError(f"{first}{more}; fix or remove the clip, or set data.on_bad_line=skip to drop it")
    for load in loads:
        bad = [p for p in report.problems if p.path == load.path]
        if bad:
            print(
                f"preflight: {load.path}: skipped {len(bad)} of {len(load.records)} clips that do not decode "
                f"(first: {bad[0]})",
                file=sys.stderr,
            )
    return report
