"""``audiomoe upcycle``: convert a trained model's adapter, keeping the encoder and LLM, starting from the same
function.

    audiomoe upcycle --from runs/dense --to moe --out runs/dense-moe --experts 4 --top-k 2
    audiomoe upcycle --from runs/per-block --to moue --out runs/moue --window 8 --widen-steps 200
    audiomoe train --config demo model.path=runs/dense-moe ...   # continue training the converted model

``--to moe``: an ``mlp`` adapter becomes an MoE whose experts are copies of the dense feed-forward (router: small
random init). ``--to moue``: a per-block ``moue`` adapter (stride = window) gets wider windows over the same pool,
the new reach behind a logit bias annealed to 0 over ``--widen-steps`` training forwards. The command checks that
the adapter outputs match the source's on a probe batch and refuses to save when they do not (``--tolerance``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "upcycle", help="convert a trained model's adapter: dense -> moe, per-block -> moue"
    )
    p.add_argument("--from", dest="source", type=Path, required=True, help="run or model directory")
    p.add_argument("--to", choices=["moe", "moue"], required=True)
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--experts", type=int, default=4, help="moe: routed experts (copies of the dense FFN)")
    p.add_argument("--top-k", type=int, default=2, help="moe: experts per token")
    p.add_argument("--router-std", type=float, default=0.02, help="moe: router init std (breaks symmetry)")
    p.add_argument(
        "--expert-noise", type=float, default=0.0, help="moe: relative noise on the copies (inexact)"
    )
    p.add_argument("--window", type=int, default=0, help="moue: new window (default: twice the old, capped)")
    p.add_argument("--widen-steps", type=int, default=0, help="moue: forwards over which the new reach opens")
    p.add_argument(
        "--tolerance", type=float, default=1e-5, help="largest allowed output difference at step 0"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.config import load_yaml
    from audiomoe.models.lalm import CONFIG_FILE, resolve_model_dir
    from audiomoe.training.upcycle import upcycle_model

    if args.to == "moe":
        options = {"num_experts": args.experts, "top_k": args.top_k, "router_std": args.router_std,
                   "expert_noise": args.expert_noise}  # fmt: skip
    else:
        adapter = load_yaml(resolve_model_dir(args.source) / CONFIG_FILE)["adapter"]
        window = args.window or min(2 * int(adapter.get("window", 1)), int(adapter.get("pool_size", 1)))
        options = {"window": window, "widen_steps": args.widen_steps}
    model, report = upcycle_model(args.source, args.to, **options)
    exact = args.expert_noise > 0 or report["max_abs_diff"] <= args.tolerance
    print(
        f"upcycle {report['from']} -> {report['to']}: adapter {report['adapter_total_params']:,} parameters "
        f"({report['adapter_active_params']:,} active); max |output difference| at step 0 = "
        f"{report['max_abs_diff']:.2e}"
    )
    if not exact:
        raise ValueError(
            f"the converted adapter differs from {args.source}'s by {report['max_abs_diff']:.2e} > --tolerance "
            f"{args.tolerance}; not saved (report this: conversions are meant to start function-preserving)"
        )
    model.save_pretrained(args.out)
    (args.out / "upcycle.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved to {args.out}; continue with: audiomoe train ... model.path={args.out}")
    return 0
