"""``audiomoe demo``: corpus -> frozen real Whisper tiny.en (cached features) -> small LLM -> linear / mlp / MoE /
dense-twin adapters at matched parameters -> ``DIR/report.md`` and ``DIR/report.json``. What ``make demo`` runs.

    audiomoe demo --out demo-out            # the full toy demo (about 15 min on 2 CPU cores)
    audiomoe demo --out demo-out --quick    # a smoke test of the same pipeline (tiny random encoder)
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train and compare linear / mlp / MoE / dense-twin adapters end to end on the built-in corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo-out", help="output folder (corpus, caches, runs, report)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings: checks the pipeline in a few minutes"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.training.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(
        f"\nreport: {args.out}/report.md ({report['wall_seconds']:.0f} s, peak RSS {report['peak_rss_gib']} GiB)"
    )
    return 0
