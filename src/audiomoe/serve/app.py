"""The FastAPI application: the OpenAI-compatible API, the routing view and the playground.

Routes:

- ``POST /v1/chat/completions``: OpenAI chat completions with ``text`` and ``input_audio`` content parts;
  ``stream: true`` answers as server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``;
- ``GET /v1/models``: the one model served; ``GET /health``: status, queue and batching counters;
- ``POST /v1/audiomoe/routing``: ``{"input_audio": {...}}`` -> this clip's routing (:mod:`audiomoe.serve.routing`)
  with its figure as a PNG ``data:`` URL;
- ``GET /``: the playground (``static/``, shipped as package data).

Every refusal is an OpenAI error body with a one-line message: 400 (bad JSON, bad audio, bad field), 404 (unknown
model or path), 413 (body over ``max_body_bytes``), 429 (queue full, with ``Retry-After``), 503 (not running). An
unexpected failure is a 500 for that request only; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.serve import protocol, routing
from audiomoe.serve.audio import decode_audio
from audiomoe.serve.batcher import DynamicBatcher, Event, Job, NotRunning, QueueFull, prepare
from audiomoe.serve.protocol import APIError, ChatCompletionRequest, RoutingRequest

log = logging.getLogger("audiomoe.serve")
T = TypeVar("T")


@dataclass
class ServeSettings:
    """Limits and batching of one server (the ``audiomoe serve`` options)."""

    model_name: str = "audiomoe"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    max_audio_seconds: float = 60.0
    max_clips: int = 8
    default_max_tokens: int = 64
    max_tokens_limit: int = 512
    precision: str = "fp32"
    device: str = "cpu"


def create_app(model: AudioLanguageModel, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``model``; its batcher starts and stops with the app's lifespan."""
    settings = settings or ServeSettings()
    model.eval()
    batcher = DynamicBatcher(
        model,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        precision=settings.precision,
        device=settings.device,
    )
    rate = model.processor.config.sampling_rate

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(
        title="audiomoe",
        description="OpenAI-compatible chat completions with audio input, and the MoE adapter's routing",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(_BodySizeLimit, max_bytes=settings.max_body_bytes)

    def decode(data: str, fmt: str, where: str):  # noqa: ANN202 - protocol.AudioDecoder
        return decode_audio(data, fmt, where, rate, settings.max_audio_seconds)

    def prepare_request(body: ChatCompletionRequest) -> tuple[protocol.Prompt, dict]:
        """Decode, check, tokenise and featurise one request (on the thread pool, not the model's thread)."""
        prompt = protocol.build_prompt(
            body, decode, model.processor.config.audio_tag, settings.default_max_tokens, settings.max_tokens_limit,
            settings.max_clips, rate,
        )  # fmt: skip
        try:
            return prompt, prepare(model, prompt)
        except ValueError as err:  # the processor's or the context length's refusal, already one line
            raise APIError(400, str(err).splitlines()[0], "messages") from None

    # -- errors -------------------------------------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(protocol.error_body(_validation_message(err), "invalid_request_error"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {
            404: f"no such path: {request.method} {request.url.path}",
            413: f"request body over this server's {settings.max_body_bytes} bytes; send a shorter clip",
        }.get(err.status_code, str(err.detail))
        return JSONResponse(protocol.error_body(message, "invalid_request_error", None, err.status_code),
                            err.status_code)  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return JSONResponse(protocol.error_body(f"internal error: {reason}", "server_error", None, 500), 500)

    # -- API ----------------------------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok" if batcher.running else "stopped",
            "model": settings.model_name,
            "adapter": model.config.adapter["type"],
            "queued": batcher.queued,
            "max_queue": batcher.max_queue,
            "max_batch": batcher.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            **batcher.stats.to_dict(),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "audiomoe"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        if body.model != settings.model_name:
            raise APIError(
                404, f"model {body.model!r} is not served here; this server serves {settings.model_name!r} "
                "(GET /v1/models)", "model", "not_found_error",
            )  # fmt: skip
        prompt, inputs = await run_in_threadpool(prepare_request, body)
        job = Job(prompt, inputs, asyncio.get_running_loop())
        _queued(lambda: batcher.submit(job))
        cid = protocol.completion_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            first = await job.events.get()  # so that a failure before the first token still gets its status
            if first.kind == "error":
                job.cancelled.set()
                raise APIError(500, first.text)
            return StreamingResponse(
                _sse(job, first, cid, settings.model_name, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text, done = await _collect(job)
        finally:
            job.cancelled.set()  # answered, or the handler was cancelled: the worker drops this row
        return protocol.completion(cid, settings.model_name, text, done.finish_reason, done.prompt_tokens,
                                   done.completion_tokens)  # fmt: skip

    @app.post("/v1/audiomoe/routing")
    async def clip_routing(body: RoutingRequest) -> dict[str, Any]:
        audio = body.input_audio
        clip = await run_in_threadpool(decode, audio.data, audio.format, "input_audio")
        future = _queued(lambda: batcher.call(lambda: routing.clip_routing(model, clip, settings.device)))
        try:
            result = await asyncio.wrap_future(future)
        except ValueError as err:  # the processor refused the clip (e.g. longer than the encoder window)
            raise APIError(400, f"input_audio: {str(err).splitlines()[0]}", "input_audio") from None
        png = await run_in_threadpool(routing.routing_png, result, clip, rate) if result["routed"] else None
        return routing.routing_json(result, png)

    # -- playground ---------------------------------------------------------------------------------------------

    static = resources.files("audiomoe.serve") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = (static / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", settings.model_name))

    app.mount("/static", StaticFiles(packages=[("audiomoe.serve", "static")]), name="static")
    return app


class _BodySizeLimit:
    """413 in OpenAI's error body for a request body over ``max_bytes``: at once when its ``Content-Length`` says
    so, else (a chunked body) as soon as that many bytes have arrived. (FastAPI's own ``max_body_size`` answers
    in plain text, outside the app's error handlers.)"""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            message = (
                f"request body of {int(declared)} bytes is over this server's {self.max_bytes}; send a shorter "
                "clip, or start the server with a larger --max-body-mb"
            )
            response = JSONResponse(protocol.error_body(message, "invalid_request_error", None, 413), 413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise StarletteHTTPException(413)  # the app's 413 handler words it
            return message

        await self.app(scope, counted, send)


def _queued(enqueue: Callable[[], T]) -> T:
    """``enqueue()`` with the batcher's refusals as HTTP errors (429 queue full, 503 not running)."""
    try:
        return enqueue()
    except QueueFull as err:
        raise APIError(429, f"the server is busy ({err}); retry shortly", None, "rate_limit_error") from None
    except NotRunning as err:
        raise APIError(503, f"the server is not serving ({err})") from None


async def _collect(job: Job) -> tuple[str, Event]:
    """The whole answer of a non-streaming request."""
    pieces = []
    while True:
        event = await job.events.get()
        if event.kind == "delta":
            pieces.append(event.text)
        elif event.kind == "done":
            return "".join(pieces), event
        else:
            raise APIError(500, event.text)


async def _sse(job: Job, first: Event, cid: str, model_name: str, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's stream: a role chunk, content chunks, a finish chunk, [usage chunk], ``[DONE]``."""

    def data(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        yield data(protocol.chunk(cid, model_name, {"role": "assistant", "content": ""}))
        event = first
        while True:
            if event.kind == "delta":
                yield data(protocol.chunk(cid, model_name, {"content": event.text}))
            elif event.kind == "done":
                yield data(protocol.chunk(cid, model_name, {}, event.finish_reason))
                if include_usage:
                    usage = protocol.usage(event.prompt_tokens, event.completion_tokens)
                    yield data(protocol.chunk(cid, model_name, None, usage_=usage))
                break
            else:  # the status line is sent already: the error travels as an OpenAI error event
                yield data(protocol.error_body(event.text, "server_error", None, 500))
                break
            event = await job.events.get()
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client left, or the answer is complete: the worker drops this row


def _validation_message(err: RequestValidationError) -> str:
    """pydantic's first complaint as one line: ``messages[0].role: Input should be 'system', ...``."""
    errors = err.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
