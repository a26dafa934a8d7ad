"""``audiomoe eval``: score a saved model on a manifest (any accepted schema) or an MMAU/MMAR-style JSON.

    audiomoe eval --checkpoint runs/demo-moe --manifest corpus/test.jsonl --json eval.json --modality-gap
    audiomoe eval --checkpoint runs/demo-moe/model --mcq mmau-test-mini.json

``--checkpoint`` is a model directory (``save_pretrained``) or a training run directory (its ``model/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audiomoe import runtime
from audiomoe.cli.options import non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="per-task / per-group / per-attribute evaluation of a saved model (and the modality gap)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="model directory, or a run directory holding model/"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", nargs="+", help="JSONL manifest(s) to evaluate on")
    source.add_argument("--mcq", help="multiple-choice JSON in the MMAU / MMAR format")
    parser.add_argument(
        "--tasks", nargs="+", default=[], metavar="FILE",
        help="tasks files declaring the manifests' tasks (the model's own tasks.yaml is read as well)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the full report (with predictions) here")
    parser.add_argument("--markdown", help="write the tables here (they are printed either way)")
    parser.add_argument("--modality-gap", action="store_true", help="also ask with the transcript as text")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument(
        "--limit", type=non_negative_int, default=0, help="evaluate only the first N items (0 = all)"
    )
    parser.add_argument("--on-bad-line", choices=["fail", "skip"], default="fail")
    parser.add_argument("--feature-cache", default="", help="reuse/fill a frozen-encoder feature cache here")
    runtime.add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.data.tasks import load_tasks_files
    from audiomoe.evaluation.evaluate import evaluate_manifests, evaluate_mcq
    from audiomoe.models.directory import resolve_model_dir

    load_tasks_files(args.tasks)
    model_dir = resolve_model_dir(args.checkpoint)
    options = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "limit": args.limit}
    threads = runtime.configure_threads(args.threads)
    device = runtime.default_device()  # where evaluation puts the model
    precision = runtime.resolve_precision(args.precision, device)
    print(f"eval: precision {precision}, threads {threads}, {device}", file=sys.stderr)
    with runtime.autocast(precision, device):
        if args.mcq:
            report = evaluate_mcq(model_dir, args.mcq, **options)
        else:
            report = evaluate_manifests(
                model_dir, args.manifest, modality=args.modality_gap, on_bad_line=args.on_bad_line,
                feature_cache=args.feature_cache, **options,
            )  # fmt: skip
    report["runtime"] = {"precision": precision, "threads": threads, "device": str(device)}
    print(report["markdown"])
    if args.markdown:
        Path(args.markdown).write_text(report["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
