"""``audiomoe infer``: answer a prompt about each audio clip with a saved model, in batches, on the GPU if any.

    audiomoe infer runs/tiny --audio a.wav --audio b.wav --prompt "What do you hear?"
    audiomoe infer exported/tiny --folder clips/ --batch-size 16 --jsonl answers.jsonl
    audiomoe infer runs/tiny --manifest test.jsonl --num-beams 4 --max-new-tokens 32

The model is a run directory, an audiomoe model directory or a transformers-native one (``audiomoe export``);
it runs on the first GPU where there is one (``--device`` to choose). Clips come from ``--audio`` files, every
audio file under ``--folder`` (sorted), or a ``--manifest`` (each record's instruction is its prompt). Each clip is
one sample (the prompt gets an ``<audio>`` tag in front unless it holds one). Decoding goes through
``transformers``' ``generate`` with a ``GenerationConfig``: greedy by default, ``--sample`` (``--temperature``,
``--top-p``, ``--top-k``) or beam search (``--num-beams``). Answers print as ``AUDIO: ANSWER``; ``--jsonl`` writes one
``{"key", "audio", "prompt", "answer"}`` record per line (``-`` for standard output instead of the printout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from audiomoe import runtime
from audiomoe.cli.options import non_negative_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="answer a prompt about each audio clip with a saved model (batched, GPU when present)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, nargs="?", default=None, help="run, model or native directory")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="the model directory (as the positional)"
    )
    parser.add_argument("--audio", type=Path, action="append", default=[], help="audio file (repeatable)")
    parser.add_argument("--folder", type=Path, default=None, help="every audio file under this folder")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="a manifest; its instructions are the prompts"
    )
    parser.add_argument("--prompt", default="What do you hear?", help="user prompt (an <audio> tag is added)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per generate call")
    parser.add_argument("--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=non_negative_float, default=0.7)
    parser.add_argument("--top-p", type=non_negative_float, default=0.9)
    parser.add_argument("--top-k", type=positive_int, default=50)
    parser.add_argument("--num-beams", type=positive_int, default=1, help="beam search with this many beams")
    parser.add_argument("--seed", type=int, default=0, help="random seed for --sample")
    parser.add_argument(
        "--model-root", type=Path, default=None, help="root for a compact export's references"
    )
    parser.add_argument("--jsonl", default=None, help="write one JSON record per clip here ('-': stdout)")
    parser.add_argument("--json", type=Path, default=None, help="also write all records as one JSON list")
    runtime.add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def _items(args: argparse.Namespace) -> list[dict[str, str]]:
    """``{"key", "audio", "prompt"}`` per clip, from files, a folder and a manifest, in that order."""
    from audiomoe.data.importers import AUDIO_SUFFIXES
    from audiomoe.data.manifest import read_manifest

    paths = list(args.audio)
    if args.folder is not None:
        if not args.folder.is_dir():
            raise FileNotFoundError(f"--folder {args.folder}: not a directory")
        found = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"--folder {args.folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
        paths += found
    items = [{"key": p.stem, "audio": str(p), "prompt": args.prompt} for p in paths]
    if args.manifest is not None:
        items += [
            {"key": r.key, "audio": r.audio, "prompt": r.instruction} for r in read_manifest(args.manifest)
        ]
    if not items:
        raise ValueError("no audio given: use --audio FILE, --folder DIR or --manifest FILE")
    return items


def generation_config(args: argparse.Namespace, base: Any) -> Any:
    """The ``GenerationConfig`` for the options: the model's own (stop ids, pad id) updated by them."""
    import copy

    config = copy.deepcopy(base)
    config.max_new_tokens, config.num_beams = args.max_new_tokens, args.num_beams
    config.do_sample = args.sample
    if args.sample:
        config.temperature, config.top_p, config.top_k = args.temperature, args.top_p, args.top_k
    return config


def run(args: argparse.Namespace) -> int:
    import torch

    from audiomoe.data.audio import load_audio
    from audiomoe.models.hf.export import load_native
    from audiomoe.tensors import to_device

    model_dir = args.model or args.checkpoint
    if model_dir is None:
        raise ValueError("give the model directory: audiomoe infer MODEL_DIR --audio FILE")
    for name in ("max_new_tokens", "batch_size", "num_beams"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    items = _items(args)
    runtime.configure_threads(args.threads)
    device = runtime.default_device() if args.device == "auto" else torch.device(args.device)
    precision = runtime.resolve_precision(args.precision, device)
    model, processor = load_native(model_dir, args.model_root)
    model.to(device)
    config = generation_config(args, model.generation_config)
    rate = processor.config.sampling_rate
    torch.manual_seed(args.seed)
    records = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        clips = [[load_audio(item["audio"], sampling_rate=rate)] for item in chunk]
        batch = to_device(processor([item["prompt"] for item in chunk], clips), device)
        with torch.no_grad(), runtime.autocast(precision, device):
            out = model.generate(**batch, generation_config=config)
        answers = processor.decode(out[:, batch["input_ids"].shape[1] :])
        records += [{**item, "answer": answer} for item, answer in zip(chunk, answers)]
    if args.jsonl != "-":
        for record in records:
            print(f"{record['audio']}: {record['answer']}")
    if args.jsonl:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if args.jsonl == "-":
            sys.stdout.write(lines)
        else:
            Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
            Path(args.jsonl).write_text(lines)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return 0
