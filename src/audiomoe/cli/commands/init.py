"""``audiomoe init``: build an (untrained) audio language model from a preset or a config file and save it.

audiomoe init --preset tiny --adapter moe --out runs/tiny
audiomoe init --config lalm-whisper-large-v3-qwen2.5-7b --out runs/big --set lora.r=16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from audiomoe.config import add_override_arguments, overrides_of


def register(subparsers: argparse._SubParsersAction) -> None:
    from audiomoe.models.presets import PRESETS

    parser = subparsers.add_parser(
        "init",
        help="build an untrained LALM (encoder + adapter + LLM) from a preset or config and save it",
        description="Writes a model directory loadable with AudioLanguageModel.from_pretrained and `audiomoe "
        "infer`. Presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe")
    source.add_argument("--config", type=Path, help="an LALMConfig YAML file, or a shipped config name")
    parser.add_argument("--adapter", default=None, help="adapter type (linear, mlp, conv, qformer, moe, ...)")
    add_override_arguments(
        parser, "model config"
    )  # e.g. adapter.num_experts=8 (or --set adapter.num_experts=8)
    parser.add_argument("--out", type=Path, required=True, help="output model directory (new or empty)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.config import load_config, load_yaml
    from audiomoe.models.lalm import AudioLanguageModel, LALMConfig
    from audiomoe.models.presets import build_preset

    if args.out.exists() and any(args.out.iterdir()):
        raise FileExistsError(f"{args.out} exists and is not empty; choose a new --out directory")
    overrides = overrides_of(args)
    if args.preset:
        config = build_preset(args.preset, adapter_type=args.adapter or "linear", overrides=overrides)
    else:
        if args.adapter and args.adapter != load_yaml(args.config).get("adapter", {}).get("type"):
            overrides.insert(0, f"adapter.type={args.adapter}")
        config = load_config(LALMConfig, args.config, overrides)
    start = time.perf_counter()
    model = AudioLanguageModel(config)
    model.save_pretrained(args.out)
    print(model.format_param_summary())
    print(f"wrote {args.out} ({config.adapter['type']} adapter) in {time.perf_counter() - start:.1f} s")
    return 0
