"""``audiomoe siblings``: CORD vs forward KL vs SFT on the modality gap, MoUE-style vs per-block MoE vs the
single-layer MoE-Adapter vs dense at matched active parameters, and upcycled vs from-scratch MoE, on the demo's
corpus with >= 3 seeds and intervals -> ``DIR/report.md`` / ``DIR/report.json``. What ``make experiment-siblings``
runs.

    audiomoe siblings --out siblings-out          # the measured comparison (~25 min on 2 CPU cores)
    audiomoe siblings --out siblings-quick --quick   # a smoke test of the same pipeline
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "siblings",
        help="measure CORD, the MoUE-style adapter and upcycling against their baselines on the built-in corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="siblings-out", help="output folder (corpus, caches, runs, report)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline")
    parser.add_argument("--seeds", type=int, help="training seeds per arm (default 3)")
    parser.add_argument(
        "--workers", type=int, help="runs side by side, one thread each (default: one per core)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="read back finished runs in --out instead of training them again"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.recipes.siblings import run_siblings

    report = run_siblings(
        args.out, quick=args.quick, seeds=args.seeds, workers=args.workers, reuse=args.reuse
    )
    print(f"\nreport: {args.out}/report.md ({report['wall_seconds']:.0f} s)")
    return 0
