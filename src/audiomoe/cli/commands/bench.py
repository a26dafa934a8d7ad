"""``audiomoe bench adapter`` (adapter speed, see audiomoe.benchmarks.adapter_speed), ``audiomoe bench
contention`` (training speed with one core busy, see audiomoe.benchmarks.contention), ``feature-cache``,
``serve`` (server throughput with dynamic batching, see audiomoe.benchmarks.serve) and ``data`` (loading in
DataLoader workers, see audiomoe.benchmarks.data_loading)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiomoe.cli.options import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed benchmarks (ratios against a baseline measured in the same run)")
    which = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    a = which.add_parser("adapter", help="MoE-Adapter vs dense SwiGLU of equal active FLOPs vs transformers")
    a.add_argument("--json", type=Path, help="write the full results here")
    a.add_argument("--shape", action="append", help="only these shapes (repeatable)")
    a.add_argument("--repeats", type=int, default=7)
    a.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="auto: bfloat16 where this machine runs bf16 natively, else float32",
    )
    a.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    a.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a.add_argument(
        "--no-hf", action="store_true", help="skip transformers' blocks (slow to build at large shapes)"
    )
    a.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile'd MoE and dense arms (compiling takes a while)",
    )
    a.set_defaults(func=run_adapter)
    c = which.add_parser(
        "contention",
        help="tiny-LALM training steps/s quiet vs one busy core: default thread policy vs 2 spinning threads",
    )
    c.add_argument("--json", type=Path, help="write the full results here")
    c.add_argument("--steps", type=int, default=5, help="training steps per phase")
    c.add_argument("--repeats", type=int, default=3, help="quiet/loaded phase pairs per policy")
    c.add_argument(
        "--phase-seconds", type=float, default=2.5, help="cap on one phase (at least one step runs)"
    )
    c.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    c.add_argument(
        "--preset",
        default="tiny",
        help="model preset (whisper-tiny-en: the CPU demo's size, needs its weights)",
    )
    c.set_defaults(func=run_contention)
    f = which.add_parser(
        "feature-cache",
        help="adapter-only training steps: frozen-encoder feature cache vs recomputing the encoder",
    )
    f.add_argument("--manifest", required=True, help="a corpus manifest (e.g. demo-out/corpus/train.jsonl)")
    f.add_argument("--preset", default="whisper-tiny-en")
    f.add_argument("--encoder", default="", help="override encoder.path (e.g. base)")
    f.add_argument(
        "--llm", choices=["demo", "preset"], default="demo",
        help="demo: the LLM size `audiomoe demo` trains (default); preset: the preset's own LLM",
    )  # fmt: skip
    f.add_argument("--batch-size", type=positive_int, default=16)
    f.add_argument("--steps", type=int, default=12, help="measured steps per arm (after 2 warm-up steps)")
    f.add_argument("--json", type=Path, help="write the numbers here")
    f.set_defaults(func=run_feature_cache)
    s = which.add_parser(
        "serve",
        help="audiomoe serve at 1/4/16 concurrent clients vs the same requests one by one in-process",
    )
    s.add_argument("--requests", type=int, default=32, help="chat completions per arm")
    s.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent client counts")
    s.add_argument("--max-tokens", type=int, default=16, help="new tokens per answer at most")
    s.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    s.add_argument("--max-wait-ms", type=float, default=10.0, help="the server's --max-wait-ms")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--adapter", default="moe")
    s.add_argument("--threads", default="auto", help="torch threads, the same for the server and in-process")
    s.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    s.add_argument("--json", type=Path, help="write the numbers here")
    s.set_defaults(func=run_serve)
    k = which.add_parser(
        "checkpointing", help="tiny-LALM step memory with vs without activation checkpointing"
    )
    k.add_argument("--batch-size", type=positive_int, default=4)
    k.add_argument("--seconds", type=float, default=10.0, help="audio per clip")
    k.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    k.add_argument("--json", type=Path, help="write the numbers here")
    k.set_defaults(func=run_checkpointing)
    t = which.add_parser("step", help="one LALM training step by phase + step-time scaling plots")
    t.add_argument("--preset", default="tiny", help="tiny, whisper-tiny-en, real-small (weights needed)")
    t.add_argument("--steps", type=positive_int, default=5, help="measured steps per point (medians)")
    t.add_argument("--batch-size", type=positive_int, default=4)
    t.add_argument("--seconds", type=float, default=10.0, help="audio per clip for the breakdown")
    t.add_argument("--out", type=Path, default=Path("bench-step"), help="plots and step.json go here")
    t.set_defaults(func=run_step)
    d = which.add_parser(
        "data", help="clips/s of decoding + features with 0/1/2 DataLoader workers, step time hidden"
    )
    d.add_argument("--clips", type=int, default=32)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    d.add_argument("--steps", type=int, default=4, help="measured training steps per arm")
    d.add_argument("--preset", default="tiny")
    d.add_argument("--manifest", default="", help="clips of this manifest instead of generated ones")
    d.add_argument("--json", type=Path, help="write the numbers here")
    d.set_defaults(func=run_data)


def run_adapter(args: argparse.Namespace) -> int:
    import torch

    from audiomoe.benchmarks.adapter_speed import format_table, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)

    result = run_benchmark(
        args.shape, repeats=args.repeats, dtype=args.dtype, device=args.device, hf=not args.no_hf,
        compiled=args.compile,
    )  # fmt: skip
    return report(result, format_table(result), args.json)


def run_contention(args: argparse.Namespace) -> int:
    from audiomoe.benchmarks.contention import format_report, run_benchmark

    result = run_benchmark(args.steps, args.repeats, args.phase_seconds, args.precision, preset=args.preset)
    return report(result, format_report(result), args.json)


def run_checkpointing(args: argparse.Namespace) -> int:
    from audiomoe.benchmarks.activation_memory import format_report, run_benchmark

    result = run_benchmark(args.batch_size, args.seconds, args.device)
    return report(result, format_report(result), args.json)


def run_step(args: argparse.Namespace) -> int:
    from audiomoe.benchmarks.step import format_report, run_benchmark, write_plots

    result = run_benchmark(args.preset, args.steps, args.batch_size, args.seconds)
    paths = write_plots(result, args.out)
    print(format_report(result))
    print(f"wrote {args.out / 'step.json'} and {len(paths)} plots")
    return 0


def run_feature_cache(args: argparse.Namespace) -> int:
    from audiomoe.benchmarks.feature_cache import format_result, run_benchmark

    result = run_benchmark(args.manifest, args.preset, args.encoder, args.llm, args.batch_size, args.steps)
    return report(result, format_result(result), args.json)


def run_serve(args: argparse.Namespace) -> int:
    from audiomoe.benchmarks.serve import format_report, run_benchmark

    result = run_benchmark(
        args.requests, tuple(args.clients), args.max_tokens, args.max_batch, args.max_wait_ms, args.preset,
        args.adapter, args.threads, args.precision,
    )  # fmt: skip
    return report(result, format_report(result), args.json)


def run_data(args: argparse.Namespace) -> int:
    from audiomoe.benchmarks.data_loading import format_result, run_benchmark

    result = run_benchmark(args.clips, args.batch_size, args.workers, args.steps, args.preset, args.manifest)
    return report(result, format_result(result), args.json)


def report(result: dict, text: str, json_path: Path | None) -> int:
    """Every benchmark's ending: its table printed, the full result as JSON when asked."""
    print(text)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0
