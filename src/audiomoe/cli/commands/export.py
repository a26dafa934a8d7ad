"""``audiomoe export``: a saved model or run directory -> a transformers-native directory that travels.

    audiomoe export runs/tiny exported/tiny                 # every weight stored; LoRA as a PEFT folder lora/
    audiomoe export runs/tiny exported/tiny --merge-lora    # LoRA merged into the LLM: torch + transformers only
    audiomoe export runs/small exported/small --compact --model-root ~/models   # frozen parts by reference

The output loads with ``transformers.AutoModel.from_pretrained(OUT, trust_remote_code=True)`` and
``AutoProcessor.from_pretrained(OUT, trust_remote_code=True)`` where audiomoe is not installed, and with
``peft.PeftModel.from_pretrained(base_llm, OUT/lora)`` for the LoRA alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model as a transformers-native directory (remote code, PEFT LoRA, optional merge)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="model directory, or a run directory holding model/")
    parser.add_argument("output", type=Path, help="output directory (new or empty)")
    parser.add_argument("--merge-lora", action="store_true", help="merge LoRA into the weights (no lora/)")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="store frozen components loaded from a path as a reference + checksum instead of their weights",
    )
    parser.add_argument(
        "--model-root",
        type=Path,
        default=None,
        help="with --compact: the models root that references are relative to (default $AUDIOMOE_MODEL_ROOT)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.models.hf.export import export_directory

    if args.output.exists() and any(args.output.iterdir()):
        raise FileExistsError(f"{args.output} is not empty; choose a new output directory")
    out = export_directory(
        args.source,
        args.output,
        include_frozen=not args.compact,
        merge_lora=args.merge_lora,
        model_root=args.model_root,
    )
    files = sorted(p for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    lora = [p.parent.name for p in files if p.name == "adapter_config.json"]
    sources = json.loads((out / "config.json").read_text()).get("sources", {})
    referenced = ", ".join(f"{name} -> {s['reference']}" for name, s in sources.items()) or "none"
    print(
        f"wrote {out}: {len(files)} files, {size / 2**20:.1f} MiB; LoRA folders: {', '.join(lora) or 'none'}; "
        f"referenced: {referenced}"
    )
    return 0
