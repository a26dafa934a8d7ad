"""``audiomoe bench adapter``: adapter speed benchmark (see audiomoe.benchmarks.adapter_speed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed benchmarks (ratios against a baseline measured in the same run)")
    which = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    a = which.add_parser("adapter", help="MoE-Adapter vs dense SwiGLU of equal active FLOPs vs transformers")
    a.add_argument("--json", type=Path, help="write the full results here")
    a.add_argument("--shape", action="append", help="only these shapes (repeatable)")
    a.add_argument("--repeats", type=int, default=7)
    a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    a.set_defaults(func=run_adapter)


def run_adapter(args: argparse.Namespace) -> int:
    import torch

    from audiomoe.benchmarks.adapter_speed import format_table, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)

    result = run_benchmark(args.shape, repeats=args.repeats, dtype=args.dtype)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
