"""``audiomoe demo``: corpus -> frozen real Whisper tiny.en (cached features) -> small LLM -> linear / mlp / MoE /
dense-twin adapters at matched parameters, several seeds -> ``DIR/report.md`` and ``DIR/report.json`` with
intervals and paired tests. What ``make demo`` runs.

    audiomoe demo --out demo-out              # the full toy demo, 3 seeds per arm
    audiomoe demo --out demo-out --seeds 5    # more seeds: tighter intervals, longer run
    audiomoe demo --out demo-out --quick      # a smoke test of the same pipeline (tiny random encoder, 3 seeds)
    audiomoe demo --out experiment-out --profile experiment   # real SmolLM2-135M (LoRA): make experiment
    audiomoe demo --out demo-out steps=800 batch_size=16      # settings overridden (recipes/demo/settings.py)
    audiomoe demo --out experiment-out --profile experiment --resume   # keep finished runs, continue the rest
"""

from __future__ import annotations

import argparse

from audiomoe.config import add_override_arguments, overrides_of


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
    parser.add_argument("--seeds", type=int, help="training seeds per arm (default 3)")
    parser.add_argument(
        "--workers", type=int, help="arms trained side by side, one thread each (default: one per core)"
    )
    parser.add_argument(
        "--profile",
        default="full",
        choices=["full", "quick", "experiment"],
        help="full: the toy demo; quick: = --quick; experiment: real Whisper tiny.en + SmolLM2-135M, MoE vs dense",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the (arm, seed) runs an earlier demo in --out finished with the same settings, and continue "
        "interrupted ones from their checkpoints",
    )
    add_override_arguments(parser, "demo settings (fields of DemoSettings)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.recipes.demo import run_demo

    report = run_demo(
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        workers=args.workers,
        profile=args.profile,
        overrides=overrides_of(args),
        resume=args.resume,
    )
    print(
        f"\nreport: {args.out}/report.md ({report['wall_seconds']:.0f} s, peak RSS {report['peak_rss_gib']} GiB)"
    )
    return 0
