"""``audiomoe data validate|convert|shard|import-folder``: check manifests line by line (any format), write any
format as native JSONL or as tar shards, make a manifest from a folder of labelled recordings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiomoe.cli.options import non_negative_float


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="validate manifests, import labelled folders")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    val = sub.add_parser(
        "validate", help="check every line of manifests (JSON, schema, file, decode, duration)"
    )
    val.add_argument(
        "manifests", nargs="+", metavar="MANIFEST", help="JSONL(.gz), datasets dir, parquet, arrow"
    )
    val.add_argument("--tasks", nargs="+", default=[], metavar="FILE", help="tasks files declaring the tasks")
    val.add_argument("--no-audio", action="store_true", help="skip decoding (only JSON, schema, file exists)")
    val.add_argument(
        "--max-duration",
        type=non_negative_float,
        default=None,
        help="reject clips longer than this many seconds (default: none; longer than the encoder window is "
        "encoded in windows, as training and eval do)",
    )
    val.set_defaults(func=run_validate)

    conv = sub.add_parser(
        "convert", help="write any accepted format (datasets, lhotse, NeMo, ...) as native JSONL"
    )
    conv.add_argument("source", metavar="IN")
    conv.add_argument("out", metavar="OUT", help="native JSONL to write (.gz compresses)")
    conv.add_argument(
        "--tasks", nargs="+", default=[], metavar="FILE", help="tasks files declaring the tasks"
    )
    conv.add_argument("--task", default="", help="task of records that name none")
    conv.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                      help="tabular formats: read native FIELD from COLUMN (repeatable)")  # fmt: skip
    conv.add_argument("--on-bad-line", choices=["fail", "skip"], default="fail")
    conv.set_defaults(func=run_convert)

    shard = sub.add_parser(
        "shard", help="write any accepted source as WebDataset-style tar shards (streamed)"
    )
    shard.add_argument("source", metavar="IN")
    shard.add_argument("out_dir", metavar="OUTDIR", help="folder for shard-000000.tar, ...")
    shard.add_argument("--shard-size", type=int, default=1000, help="records per shard (default 1000)")
    shard.add_argument("--prefix", default="shard", help="shard file name prefix (default shard)")
    shard.add_argument(
        "--tasks", nargs="+", default=[], metavar="FILE", help="tasks files declaring the tasks"
    )
    shard.add_argument("--task", default="", help="task of records that name none")
    shard.add_argument("--on-bad-line", choices=["fail", "skip"], default="fail")
    shard.set_defaults(func=run_shard)

    imp = sub.add_parser("import-folder", help="make a manifest from a folder of labelled audio files")
    imp.add_argument("folder")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--pattern", help="file-name pattern, e.g. '{label}_{speaker}_{index}.wav'")
    src.add_argument("--csv", help="CSV with columns file,label[,attribute...] (paths relative to FOLDER)")
    imp.add_argument("--task", required=True, help="task name (built in, or declared in --tasks)")
    imp.add_argument("--tasks", nargs="+", default=[], metavar="FILE", help="tasks files declaring the task")
    imp.add_argument("--out", required=True, help="manifest to write (JSONL)")
    imp.set_defaults(func=run_import)


def load_tasks(paths: list[str]) -> None:
    """Register the tasks files; a task whose metric is not registered is an error naming the file."""
    from audiomoe.data.tasks import TasksFileError, load_tasks_file
    from audiomoe.evaluation.metrics import METRICS

    for path in paths:
        for task in load_tasks_file(path):
            if task.metric not in METRICS:
                raise TasksFileError(
                    f"{path}: tasks.{task.name}.metric: {task.metric!r} is not a metric; one of {sorted(METRICS)}"
                )


def run_validate(args: argparse.Namespace) -> int:
    from audiomoe.data.manifest import ManifestError, load_manifest, validate_manifest
    from audiomoe.data.tasks import TASKS, unknown_task_note

    load_tasks(args.tasks)
    bad = 0
    for path in args.manifests:
        notes: list[str] = []
        problems = validate_manifest(
            path, check_audio=not args.no_audio, max_duration=args.max_duration, notes=notes
        )
        for problem in problems:
            print(problem)
        for note in notes:
            print(note, file=sys.stderr)
        if Path(path).exists():
            try:
                names = {r.task for r in load_manifest(path, on_error="skip", check_files=False).records}
            except (OSError, ManifestError):  # the file itself is bad: already reported as a problem
                names = set()
            for name in sorted(names - set(TASKS)):
                print(f"{path}: note: {unknown_task_note(name)}", file=sys.stderr)
        lines = {p.line for p in problems}
        bad += len(lines)
        status = "ok" if not problems else f"{len(lines)} bad line(s)"
        print(f"{path}: {status}", file=sys.stderr)
    return 2 if bad else 0  # bad input (the error contract: 1 is only for bugs)


def run_convert(args: argparse.Namespace) -> int:
    from audiomoe.data.manifest import load_manifest, write_manifest
    from audiomoe.data.sources import Source

    load_tasks(args.tasks)
    pairs = [c.split("=", 1) for c in args.column]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"--column takes FIELD=COLUMN, got {args.column}")
    source = Source(args.source, columns=dict(pairs), task=args.task)
    loaded = load_manifest(source, on_error=args.on_bad_line)
    if loaded.problems:
        print(loaded.summary(), file=sys.stderr)
    count = write_manifest(loaded.records, args.out)
    print(f"wrote {count} records to {args.out}")
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from audiomoe.data.manifest import load_manifest
    from audiomoe.data.shards import write_shards
    from audiomoe.data.sources import Source

    load_tasks(args.tasks)
    loaded = load_manifest(Source(args.source, task=args.task), on_error=args.on_bad_line)
    if loaded.problems:
        print(loaded.summary(), file=sys.stderr)
    shards = write_shards(loaded.records, args.out_dir, args.shard_size, args.prefix)
    print(f"wrote {len(loaded.records)} records in {len(shards)} shards to {args.out_dir}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from audiomoe.data.importers import import_folder

    load_tasks(args.tasks)
    report = import_folder(args.folder, args.task, args.out, pattern=args.pattern, csv_path=args.csv)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0
