"""``audiomoe convert-whisper SOURCE OUT_DIR``: a CTranslate2 (faster-whisper) Whisper -> a transformers directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-whisper",
        help="convert a CTranslate2 Whisper directory (or pinned weights 'tiny.en' / 'base') to transformers",
        description="Reads model.bin without the ctranslate2 runtime and writes safetensors, config, generation "
        "config, tokenizer and feature extractor files loadable with WhisperForConditionalGeneration.",
    )
    parser.add_argument("source", help="CTranslate2 directory with model.bin, or 'tiny.en' / 'base'")
    parser.add_argument("out_dir", type=Path, help="output directory (created)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audiomoe.models.ct2 import convert_to_transformers

    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        raise FileExistsError(f"{args.out_dir} exists and is not empty; choose a new OUT_DIR")
    start = time.perf_counter()
    out = convert_to_transformers(args.source, args.out_dir)
    print(f"wrote transformers Whisper to {out} in {time.perf_counter() - start:.1f} s")
    return 0
