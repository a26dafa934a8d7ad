"""``audiomoe serve``: an OpenAI-compatible HTTP server for a saved model, with a browser playground.

    audiomoe serve --checkpoint runs/tiny --port 8000
    # then: http://127.0.0.1:8000/ (playground), or any OpenAI client with base_url http://127.0.0.1:8000/v1

``POST /v1/chat/completions`` takes ``text`` and ``input_audio`` content parts (``stream: true`` for server-sent
events); ``GET /v1/models``, ``GET /health``; ``POST /v1/audiomoe/routing`` gives a clip's expert routing.
Concurrent requests are batched (up to ``--max-batch``, waiting at most ``--max-wait-ms`` for company); more than
``--max-queue`` waiting requests get 429. ``temperature`` absent or 0 decodes greedily. Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audiomoe import runtime


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP API (audio in, dynamic batching) and a browser playground for a saved model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="model directory, or a run directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every one)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model-name", default="", help="the id clients send as `model` (default: directory name)"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    parser.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="how long a lone request waits for company"
    )
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    parser.add_argument(
        "--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask"
    )
    parser.add_argument("--max-audio-seconds", type=float, default=60.0, help="longest clip accepted")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (413 above)")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    runtime.add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from audiomoe.serve.app import ServeSettings, create_app
    except ImportError as err:
        raise ValueError(
            f"audiomoe serve needs the serve extra ({err.name} is missing): pip install 'audiomoe[serve]'"
        ) from None
    from audiomoe.models.directory import resolve_model_dir
    from audiomoe.models.lalm import AudioLanguageModel

    for name in ("max_batch", "max_queue", "max_tokens_limit"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model_dir = resolve_model_dir(args.checkpoint)
    threads = runtime.configure_threads(args.threads)
    device = runtime.default_device()
    precision = runtime.resolve_precision(args.precision, device)
    model = AudioLanguageModel.from_pretrained(model_dir).to(device)
    settings = ServeSettings(
        model_name=args.model_name or args.checkpoint.resolve().name,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_seconds,
        max_tokens_limit=args.max_tokens_limit,
        precision=precision,
        device=str(device),
    )
    print(
        f"serve: {settings.model_name} ({model.config.adapter['type']} adapter) on http://{args.host}:{args.port}/ "
        f"· precision {precision}, threads {threads}, {device}, batches of up to {args.max_batch}",
        file=sys.stderr,
    )
    uvicorn.run(create_app(model, settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
