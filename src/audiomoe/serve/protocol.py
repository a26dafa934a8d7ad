"""The OpenAI chat-completions wire format: requests in, a prompt and clips out; answers and stream chunks back.

A request's ``messages`` become one conversation for :class:`~audiomoe.models.processor.AudioLanguageProcessor`:
in a message whose ``content`` is a list of parts, each ``{"type": "text", "text": ...}`` part is its text and each
``{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}`` part becomes the processor's
``<audio>`` tag at that place (parts joined by newlines, so ``[audio, text]`` is ``"<audio>\\nTEXT"``, the prompt
``audiomoe infer`` builds). Everything a client can get wrong is an :class:`APIError` with an HTTP status and one
line saying what, where (``messages[1].content[0]``) and what to do, in OpenAI's error body.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """A request the server refuses: ``status`` (400, 404, 413, 429, 503, ...) and a one-line ``message``."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """OpenAI's error body (what the ``openai`` client turns into ``BadRequestError`` etc.)."""
        return error_body(self.message, self.kind, self.param, self.status)


def error_body(message: str, kind: str, param: str | None = None, code: int | str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ChatMessage(BaseModel):
    """One message; ``content`` is a string, a list of parts (checked by :func:`build_prompt`) or null."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` this server reads; others (``seed``, ``user``, ...) are ignored.

    ``temperature`` absent or 0 means greedy decoding (deterministic answers), above 0 sampling with ``top_p``.
    """

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)


class AudioInput(BaseModel):
    """``{"data": BASE64, "format": "wav"}``: the ``input_audio`` object of a content part."""

    model_config = ConfigDict(extra="ignore")
    data: str
    format: str = "wav"


class RoutingRequest(BaseModel):
    """``POST /v1/audiomoe/routing``: one clip, as an ``input_audio`` object."""

    model_config = ConfigDict(extra="ignore")
    input_audio: AudioInput


@dataclass
class Prompt:
    """A request made ready for the batcher: the conversation (``<audio>`` tags in place) and its clips ``(T,)``."""

    conversation: list[dict[str, str]]
    clips: list[np.ndarray]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    audio_seconds: float = 0.0


AudioDecoder = Callable[[str, str, str], np.ndarray]  # (base64 data, format, where) -> (T,) float32


def build_prompt(
    request: ChatCompletionRequest,
    decode: AudioDecoder,
    audio_tag: str,
    default_max_tokens: int,
    max_tokens_limit: int,
    max_clips: int,
    sampling_rate: int,
) -> Prompt:
    """The conversation and decoded clips of ``request``; :class:`APIError` (400) on anything malformed."""
    conversation, clips = [], []
    for m, message in enumerate(request.messages):
        where = f"messages[{m}]"
        pieces: list[str] = []
        parts = message.content if isinstance(message.content, list) else [message.content or ""]
        for p, part in enumerate(parts):
            part_where = f"{where}.content[{p}]" if isinstance(message.content, list) else f"{where}.content"
            if isinstance(part, str):
                pieces.append(_text(part, part_where, audio_tag))
                continue
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise APIError(400, f"{part_where}: a text part needs a string 'text' field", part_where)
                pieces.append(_text(part["text"], part_where, audio_tag))
            elif kind == "input_audio":
                if message.role != "user":
                    raise APIError(400, f"{part_where}: audio is only accepted in user messages", part_where)
                if len(clips) >= max_clips:
                    raise APIError(
                        400, f"{part_where}: more than {max_clips} audio clips in one request; send fewer",
                        part_where,
                    )  # fmt: skip
                audio = _audio_input(part.get("input_audio"), part_where)
                clips.append(decode(audio.data, audio.format, part_where))
                pieces.append(audio_tag)
            else:
                raise APIError(
                    400,
                    f"{part_where}: content part type {kind!r} is not supported; use 'text' or 'input_audio'",
                    part_where,
                )
        role = "system" if message.role == "developer" else message.role
        conversation.append({"role": role, "content": "\n".join(pieces)})
    if not any(m["role"] == "user" for m in conversation):
        raise APIError(
            400, "messages: no user message; add one with the question (and the audio)", "messages"
        )
    max_tokens = request.max_completion_tokens or request.max_tokens or default_max_tokens
    if max_tokens > max_tokens_limit:
        raise APIError(
            400, f"max_tokens {max_tokens} exceeds this server's limit of {max_tokens_limit}", "max_tokens"
        )
    return Prompt(
        conversation,
        clips,
        max_tokens,
        temperature=request.temperature or 0.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        audio_seconds=sum(len(c) for c in clips) / sampling_rate,
    )


def _text(text: str, where: str, audio_tag: str) -> str:
    if audio_tag in text:
        raise APIError(
            400, f"{where}: the text holds {audio_tag!r}, which marks audio; send the clip as an input_audio part",
            where,
        )  # fmt: skip
    return text


def _audio_input(value: Any, where: str) -> AudioInput:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str):
        raise APIError(
            400,
            f"{where}: input_audio needs {{'data': BASE64 string, 'format': 'wav'}}",
            f"{where}.input_audio",
        )
    fmt = value.get("format", "wav")
    if not isinstance(fmt, str):
        raise APIError(
            400, f"{where}.input_audio.format must be a string such as 'wav'", f"{where}.input_audio"
        )
    return AudioInput(data=value["data"], format=fmt)


# -- responses --------------------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(
    cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A whole ``chat.completion`` object."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    cid: str,
    model: str,
    delta: dict[str, str] | None,
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` gives the usage-only chunk (no choices) of ``include_usage``."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
