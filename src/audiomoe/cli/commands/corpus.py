"""``audiomoe corpus build``: make the built-in heterogeneous audio corpus (speech, music, sounds, mixtures)."""

from __future__ import annotations

import argparse

from audiomoe.cli.options import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("corpus", help="build the built-in labelled audio corpus")
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="synthesise N clips with train/dev/test manifests and a summary")
    build.add_argument("--out", required=True, help="output folder (empty, or a previous corpus to replace)")
    build.add_argument("--n", type=positive_int, default=2000, help="number of clips (default 2000)")
    build.add_argument(
        "--seed", type=int, default=0, help="seed; the same seed gives byte-identical manifests"
    )
    build.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    build.add_argument(
        "--extra-task",
        action="append",
        default=[],
        help="also make this task's clips, sharing its group's share (repeatable; e.g. arithmetic)",
    )
    build.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.data.corpus import build_corpus

    summary = build_corpus(
        args.out, n=args.n, seed=args.seed, workers=args.workers, extra_tasks=tuple(args.extra_task)
    )
    tasks = summary.counts["train"]["task"]
    print(
        f"built {summary.n} clips ({summary.total_audio_seconds / 60:.1f} min of audio) in {summary.out_dir}"
    )
    per_core = 1000 / summary.cpu_ms_per_clip if summary.cpu_ms_per_clip else float("inf")
    print(
        f"{summary.clips_per_second:.1f} clips/s ({summary.seconds:.1f} s wall; "
        f"{summary.cpu_ms_per_clip:.1f} ms CPU per clip = {per_core:.0f} clips/s per free core)"
    )
    for split, path in summary.manifests.items():
        count = sum(summary.counts[split]["task"].values())
        print(f"  {split}: {count} records -> {path}")
    print(f"  train tasks: {', '.join(f'{k}={v}' for k, v in tasks.items())}")
    print(f"  held-out voices (test): {', '.join(summary.held_out_speakers)}")
    print(f"  held-out sentences (test): {len(summary.held_out_sentences)}; see {summary.out_dir}/summary.md")
    return 0
