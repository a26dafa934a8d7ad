"""Turn a folder of labelled recordings into a native manifest in one call.

Labels come from the file names (``pattern``) or from a CSV:

* ``pattern='{label}_{speaker}_{index}.wav'``: every audio file under the folder whose path (relative, with
  ``/``) matches; ``{label}`` becomes the answer, the other fields become attributes. A field matches any text
  without ``/``; put folders in the pattern (``'{label}/{speaker}_{index}.wav'``) to take labels from them.
* ``csv_path``: a CSV with a ``file`` (or ``path`` / ``audio``) column relative to the folder and a ``label``
  column; every other column becomes an attribute.

Files that do not match are counted and reported (never silently dropped); no match at all is an error.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from audiomoe.data.audio import AudioError, audio_info
from audiomoe.data.manifest import AudioRecord, write_manifest
from audiomoe.data.tasks import get_task

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class ImportReport:
    """What an import found: the records written and the files skipped, with reasons."""

    records: list[AudioRecord]
    skipped: list[str] = field(default_factory=list)

    def summary(self, show: int = 5) -> str:
        lines = [f"imported {len(self.records)} files, skipped {len(self.skipped)}"]
        lines += [f"  skipped {s}" for s in self.skipped[:show]]
        if len(self.skipped) > show:
            lines.append(f"  ... and {len(self.skipped) - show} more")
        return "\n".join(lines)


def pattern_to_regex(pattern: str) -> re.Pattern[str]:
    """``'{label}_{speaker}.wav'`` -> a regex with named groups; literal text is matched exactly."""
    names = _FIELD.findall(pattern)
    if "label" not in names:
        raise ValueError(f"pattern {pattern!r} needs a {{label}} field (the answer)")
    if len(set(names)) != len(names):
        raise ValueError(f"pattern {pattern!r} repeats a field name")
    parts, last = [], 0
    for match in _FIELD.finditer(pattern):
        parts.append(re.escape(pattern[last : match.start()]))
        parts.append(f"(?P<{match.group(1)}>[^/]+?)")
        last = match.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts) + r"\Z")


def _record(root: Path, rel: str, label: str, attrs: dict[str, str], task: str) -> AudioRecord:
    info = audio_info(root / rel)
    task_obj = get_task(task)
    key = Path(rel).with_suffix("").as_posix().replace("/", "-")
    return AudioRecord(
        key=key,
        audio=str((root / rel).resolve()),
        task=task,
        instruction=task_obj.instruction(),
        answer=label,
        attributes=attrs,
        duration=round(info.duration, 4),
        transcript=label if task == "transcribe" else None,
    )


def import_folder(
    root: str | Path,
    task: str,
    out: str | Path,
    pattern: str | None = None,
    csv_path: str | Path | None = None,
) -> ImportReport:
    """Scan ``root`` and write a native manifest to ``out`` (audio paths relative to the manifest's folder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    get_task(task)
    if (pattern is None) == (csv_path is None):
        raise ValueError(
            "give exactly one of --pattern (labels from file names) or --csv (labels from a table)"
        )
    report = ImportReport(records=[])
    rows: list[tuple[str, str, dict[str, str]]] = []
    if pattern is not None:
        regex = pattern_to_regex(pattern)
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
            rel = path.relative_to(root).as_posix()
            match = regex.match(rel)
            if match is None:
                report.skipped.append(f"{rel}: does not match {pattern!r}")
                continue
            fields = match.groupdict()
            label = fields.pop("label")
            rows.append((rel, label, {k: v for k, v in fields.items()}))
    else:
        csv_path = Path(csv_path)
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            file_col = next((c for c in ("file", "path", "audio") if c in columns), None)
            if file_col is None or "label" not in columns:
                raise ValueError(
                    f"{csv_path}: needs a 'file' (or 'path'/'audio') and a 'label' column, has {columns}"
                )
            for line, row in enumerate(reader, start=2):
                rel, label = (row.get(file_col) or "").strip(), (row.get("label") or "").strip()
                if not rel or not label:
                    report.skipped.append(f"{csv_path}:{line}: empty file or label")
                    continue
                attrs = {k: v for k, v in row.items() if k not in (file_col, "label") and v not in (None, "")}
                rows.append((rel, label, attrs))
    for rel, label, attrs in rows:
        try:
            report.records.append(_record(root, rel, label, attrs, task))
        except AudioError as err:
            report.skipped.append(str(err))
    if not report.records:
        raise ValueError(f"no usable audio files found under {root}\n{report.summary()}")
    keys = [r.key for r in report.records]
    if len(set(keys)) != len(keys):
        raise ValueError(
            "two files map to the same key; rename them so their paths differ without the suffix"
        )
    write_manifest(report.records, out)
    return report
