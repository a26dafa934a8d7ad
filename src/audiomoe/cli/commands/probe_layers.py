"""``audiomoe probe-layers``: linear probes of every encoder hidden state on every closed-label task.

    audiomoe probe-layers --train corpus/train.jsonl --test corpus/test.jsonl --encoder-path tiny.en
    audiomoe probe-layers --train a.jsonl --test b.jsonl --encoder-type wavlm --encoder-path ./wavlm --json p.json

Says which layer holds which attribute (see :mod:`audiomoe.analysis.layer_probe`), to choose
``model.encoder.output_layers``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe-layers",
        help="which encoder layer holds which attribute: linear probes per hidden state and task",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train", required=True, type=Path, help="manifest the probes are fitted on")
    parser.add_argument("--test", required=True, type=Path, help="manifest the probes are scored on")
    parser.add_argument("--encoder-type", default="whisper", help="a registered encoder (default whisper)")
    parser.add_argument(
        "--encoder-path", default="tiny.en", help="encoder directory or weights package (default tiny.en)"
    )
    parser.add_argument("--task", action="append", help="probe only these tasks (repeatable)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.analysis.layer_probe import probe_layers, probe_markdown
    from audiomoe.data.manifest import read_manifest

    result = probe_layers(
        {"type": args.encoder_type, "path": args.encoder_path},
        read_manifest(args.train),
        read_manifest(args.test),
        args.task,
    )
    if not result["tasks"]:
        raise ValueError(
            f"no closed-label task has items in both {args.train} and {args.test}; give manifests of such tasks"
        )
    print(probe_markdown(result), end="")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
