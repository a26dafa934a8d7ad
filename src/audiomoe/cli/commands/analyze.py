"""``audiomoe analyze``: gradient conflict and routing of saved models, side by side, as PNGs + analysis.json.

audiomoe analyze --checkpoint runs/linear/model --checkpoint runs/moe/model --manifest corpus/dev.jsonl --out OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audiomoe.analysis.report import AnalysisConfig, analyze_checkpoints
from audiomoe.cli.options import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="gradient conflict, expert specialisation and routing plots of one or more saved models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        type=Path,
        help="a model directory (save_pretrained) or a training run directory holding model/; repeat to compare "
        "models (dense vs MoE)",
    )
    p.add_argument("--label", action="append", help="a name per --checkpoint (default: the adapter type)")
    p.add_argument("--manifest", required=True, type=Path, help="records to probe with (a dev manifest)")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNGs and analysis.json")
    p.add_argument(
        "--tasks", nargs="+", default=[], metavar="FILE", help="tasks files of the manifest's tasks"
    )
    defaults = AnalysisConfig()
    p.add_argument(
        "--probe-batches", type=positive_int, default=defaults.probe_batches, help="probe batches per group"
    )
    p.add_argument(
        "--probe-batch-size",
        type=positive_int,
        default=defaults.probe_batch_size,
        help="records per probe batch",
    )
    p.add_argument(
        "--influence-lr",
        type=float,
        default=defaults.influence_lr,
        help="SGD step of the look-ahead influence score (0 skips it)",
    )
    p.add_argument(
        "--max-items",
        type=int,
        default=defaults.max_routing_items,
        help="records run forward for the routing statistics",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=defaults.batch_size, help="batch size of the routing pass"
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the probe / routing subsets")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from audiomoe.data.tasks import TASKS_FILE_NAME, load_tasks_files

    load_tasks_files(args.tasks)
    for checkpoint in args.checkpoint:  # the tasks each model was trained with (model dir or run dir)
        saved = [
            p for p in (checkpoint / TASKS_FILE_NAME, checkpoint / "model" / TASKS_FILE_NAME) if p.is_file()
        ]
        load_tasks_files(saved[:1])
    if args.label and len(args.label) != len(args.checkpoint):
        raise ValueError(
            f"{len(args.label)} --label for {len(args.checkpoint)} --checkpoint; give one per checkpoint"
        )
    config = AnalysisConfig(
        probe_batches=args.probe_batches,
        probe_batch_size=args.probe_batch_size,
        influence_lr=args.influence_lr,
        max_routing_items=args.max_items,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result = analyze_checkpoints(args.checkpoint, args.manifest, args.out, args.label, config, args.device)
    for label, model in result["models"].items():
        ratio = result["conflict_ratio"].get(label)
        cosines = ", ".join(f"{pair} {cos:+.3f}" for pair, cos in _pairs(model).items())
        line = f"{label}: conflict ratio {_fmt(ratio)}; mean cosine {cosines or 'n/a'}"
        if label in result["balance"]:
            bal = result["balance"][label]
            line += f"; NMI(category) {_fmt(result['nmi'][label].get('category'))}; load cv {_fmt(bal['cv'])}"
            line += f", max/mean {_fmt(bal['max_over_mean'])}, dead experts {bal['dead_experts']}"
        print(line)
    for note in (n for m in result["models"].values() for n in m.get("notes", [])):
        print(f"note: {note}")
    print(f"wrote {len(result['plots'])} plots and analysis.json to {args.out}")
    return 0


def _pairs(model: dict) -> dict[str, float]:
    report = model["gradients"].get("category")
    return {k: v for k, v in (report or {}).get("mean_cosine", {}).items() if v is not None}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
