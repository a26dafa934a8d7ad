"""``audiomoe train``: train an LALM from a YAML config with dotted overrides.

audiomoe train --config demo steps=200 optim.lr=1e-3
audiomoe train --config demo --resume          # continue exactly where it stopped
audiomoe train --config run/config.yaml optim.lr=1e-4 --resume --allow-config-change optim.lr
audiomoe train --config my-run.yaml            # a file (audiomoe config copy demo my-run.yaml)
torchrun --nproc_per_node=8 -m audiomoe.cli.main train --config paper-moe-qwen3-1.7b

--config takes a shipped config name (audiomoe config list) or a YAML path.
"""

from __future__ import annotations

import argparse

from audiomoe import runtime
from audiomoe.config import add_override_arguments, overrides_of


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an LALM (AdamW, warmup+cosine, checkpoints, exact --resume, DDP/FSDP under torchrun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="training YAML path, or a shipped config name (audiomoe config list)"
    )
    add_override_arguments(parser, "training config")  # optim.lr=1e-3, or --set optim.lr=1e-3
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's newest checkpoint that verifies; refuses a changed config",
    )
    parser.add_argument(
        "--allow-config-change",
        nargs="+",
        default=[],
        metavar="KEY",
        help="with --resume: accept these changed keys or sections (e.g. optim.lr schedule), applied for real "
        "and recorded in metrics.jsonl",
    )
    # precision comes from the config (precision=auto|fp32|bf16|fp16), as every training setting does
    runtime.add_runtime_arguments(parser, precision=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.training.config import load_train_config
    from audiomoe.training.run import train

    config = load_train_config(args.config, overrides_of(args))
    runtime.configure_threads(args.threads)  # per torchrun rank: the idle cores are shared among local ranks
    if args.allow_config_change and not args.resume:
        raise ValueError("--allow-config-change only applies with --resume")
    if any("=" in key for key in args.allow_config_change):
        raise ValueError(
            "--allow-config-change takes key names (optim.lr), not overrides: put KEY=VALUE before --resume"
        )
    result = train(config, resume=args.resume, allow_changes=args.allow_config_change)
    if result.already_done:
        return 0
    if result.summary:
        print(f"trained {result.summary['steps']} steps in {result.summary['train_seconds']:.1f} s; "
              f"model saved to {result.model_dir}")  # fmt: skip
    return 0
