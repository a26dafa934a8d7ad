"""``audiomoe infer``: answer a prompt about each audio clip with a saved model.

    audiomoe infer --checkpoint runs/tiny --audio a.wav --audio b.wav --prompt "What do you hear?" --json out.json

Each clip is one sample (the prompt gets an ``<audio>`` tag in front unless it holds one); the clips run as one
batch through ``AudioLanguageModel.generate``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiomoe import runtime
from audiomoe.cli.options import non_negative_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="answer a prompt about each audio clip with a saved model directory",
        description="Loads a directory written by `audiomoe init` or training and prints one answer per clip.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="model directory")
    parser.add_argument("--audio", type=Path, action="append", required=True, help="audio file (repeatable)")
    parser.add_argument("--prompt", default="What do you hear?", help="user prompt (an <audio> tag is added)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=non_negative_float, default=0.7)
    parser.add_argument("--top-p", type=non_negative_float, default=0.9)
    parser.add_argument("--seed", type=int, default=0, help="random seed for --sample")
    parser.add_argument("--json", type=Path, default=None, help="also write the answers to this JSON file")
    runtime.add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from audiomoe.data.audio import load_audio
    from audiomoe.models.lalm import AudioLanguageModel

    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be >= 1")
    runtime.configure_threads(args.threads)
    precision = runtime.resolve_precision(args.precision, "cpu")  # the model stays on the CPU here
    model = AudioLanguageModel.from_pretrained(args.checkpoint)
    rate = model.processor.config.sampling_rate
    clips = [load_audio(path, sampling_rate=rate) for path in args.audio]
    batch = model.processor([args.prompt] * len(clips), [[clip] for clip in clips])
    torch.manual_seed(args.seed)
    with runtime.autocast(precision, "cpu"):
        answers = model.generate(
            **batch,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
        )
    records = [{"audio": str(p), "prompt": args.prompt, "answer": a} for p, a in zip(args.audio, answers)]
    for record in records:
        print(f"{record['audio']}: {record['answer']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return 0
