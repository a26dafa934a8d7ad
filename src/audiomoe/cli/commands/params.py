"""``audiomoe params``: total and active parameters of an adapter preset or adapter config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiomoe.adapters.presets import PRESETS, count_parameters, preset_config, routing_summary
from audiomoe.config import add_override_arguments, apply_overrides, load_yaml, overrides_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="print total and active parameters of an adapter")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="a named adapter preset")
    src.add_argument("--config", type=Path, help="YAML file with an adapter config (with 'type')")
    add_override_arguments(p, "adapter config")
    p.add_argument("--json", type=Path, help="also write the counts to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.preset:
        config = preset_config(args.preset, **apply_overrides({}, overrides_of(args)))
        name = args.preset
    else:
        data = load_yaml(args.config)
        data = data.get("adapter", data)  # accept a whole model config with an adapter section
        from audiomoe.adapters import adapter_config_from_dict

        config = adapter_config_from_dict(apply_overrides(data, overrides_of(args)))
        name = str(args.config)
    counts = count_parameters(config)
    share = counts["active_params"] / counts["total_params"]
    print(f"{name} ({config.type}): total {counts['total_params'] / 1e6:.2f}M ({counts['total_params']:,})")
    print(
        f"{name} ({config.type}): active {counts['active_params'] / 1e6:.2f}M ({counts['active_params']:,}), {share:.1%}"
    )
    routing = routing_summary(config)  # expert-pool adapters (moue): pool, virtual width, routing paths
    if routing:
        print(
            f"{name} ({config.type}): "
            + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in routing.items())
        )
    if args.json:
        record = {"name": name, "type": config.type, **counts, **routing}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0
