"""``audiomoe data validate|import-folder``: check manifests line by line; make a manifest from a folder."""

from __future__ import annotations

import argparse
import sys

from audiomoe.cli.options import non_negative_float


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="validate manifests, import labelled folders")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    val = sub.add_parser(
        "validate", help="check every line of manifests (JSON, schema, file, decode, duration)"
    )
    val.add_argument("manifests", nargs="+", metavar="MANIFEST")
    val.add_argument("--no-audio", action="store_true", help="skip decoding (only JSON, schema, file exists)")
    val.add_argument(
        "--max-duration",
        type=non_negative_float,
        default=None,
        help="reject clips longer than this many seconds (default: none; longer than the encoder window is "
        "encoded in windows, as training and eval do)",
    )
    val.set_defaults(func=run_validate)

    imp = sub.add_parser("import-folder", help="make a manifest from a folder of labelled audio files")
    imp.add_argument("folder")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--pattern", help="file-name pattern, e.g. '{label}_{speaker}_{index}.wav'")
    src.add_argument("--csv", help="CSV with columns file,label[,attribute...] (paths relative to FOLDER)")
    imp.add_argument("--task", required=True, help="task name (see audiomoe.data.tasks.TASKS)")
    imp.add_argument("--out", required=True, help="manifest to write (JSONL)")
    imp.set_defaults(func=run_import)


def run_validate(args: argparse.Namespace) -> int:
    from audiomoe.data.manifest import validate_manifest

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
        lines = {p.line for p in problems}
        bad += len(lines)
        status = "ok" if not problems else f"{len(lines)} bad line(s)"
        print(f"{path}: {status}", file=sys.stderr)
    return 2 if bad else 0  # bad input (the error contract: 1 is only for bugs)


def run_import(args: argparse.Namespace) -> int:
    from audiomoe.data.importers import import_folder

    report = import_folder(args.folder, args.task, args.out, pattern=args.pattern, csv_path=args.csv)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0
