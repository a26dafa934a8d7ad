"""Whole conversations -> training rows with the loss on every assistant turn (messages records with a system
prompt, several turns or several audios).

The conversation is rendered turn by turn with the tokenizer's chat template: for the ``k``-th assistant message
the text from the previous render to ``template(messages[:k], add_generation_prompt=True)`` is prompt (labels
-100), and from there to ``template(messages[:k + 1])`` is that assistant turn with its end-of-turn tokens (the
labels). Each ``<audio>`` tag becomes the clip's ``N`` placeholder tokens, as in
:class:`~audiomoe.models.processor.AudioLanguageProcessor`. A template that rewrites earlier turns when a new one
is added (so the renders are not prefixes of each other) cannot be split this way and is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from audiomoe.models.processor import IGNORE_INDEX, AudioLanguageProcessor, Conversation


def _pieces(processor: AudioLanguageProcessor, messages: Conversation) -> list[tuple[str, bool]]:
    """``(text, is_label)`` spans of the rendered conversation, in order."""
    render = processor.tokenizer.apply_chat_template
    pieces, done = [], ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:k], tokenize=False, add_generation_prompt=True)
        full = render(messages[: k + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "the chat template rewrites earlier turns, so a multi-turn record cannot put its loss on each "
                "assistant turn; use single-turn records with this tokenizer"
            )
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return pieces


def conversation_row(
    processor: AudioLanguageProcessor, messages: Conversation, n_tokens: Iterator[int]
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; ``n_tokens`` yields each clip's placeholder count in tag order."""
    ids: list[int] = []
    labels: list[int] = []
    for text, is_label in _pieces(processor, messages):
        for j, segment in enumerate(text.split(processor.config.audio_tag)):
            if j:
                n = next(n_tokens)
                ids += [processor.audio_token_id] * n
                labels += [IGNORE_INDEX] * n
            encoded = processor._encode(segment)
            ids += encoded
            labels += encoded if is_label else [IGNORE_INDEX] * len(encoded)
    return ids, labels


def conversation_batch(
    processor: AudioLanguageProcessor,
    conversations: Sequence[Conversation],
    clips: Sequence[Sequence[np.ndarray]],
) -> dict[str, Any]:
    """Training batch of whole conversations (each ending with an assistant turn) and their clips: the keys of
    the processor's batch, ``labels`` on every assistant turn. ``clips[i]``: conversation ``i``'s clips, tag order."""
    system = processor.config.system_prompt
    conversations = [
        [{"role": "system", "content": system}, *c] if system and c[0]["role"] != "system" else list(c)
        for c in conversations
    ]
    flat = [clip for sample in clips for clip in sample]
    features, lengths = processor.extract_features(flat)
    n_tokens = iter(processor.audio_token_lengths(lengths).tolist() if flat else [])
    rows, label_rows = zip(*(conversation_row(processor, c, n_tokens) for c in conversations))
    batch: dict[str, Any] = processor._pad(list(rows), list(label_rows), "right")
    if flat:
        batch["audio_features"], batch["audio_lengths"] = features, lengths
    return batch


def as_conversation(instruction: str, answer: str, n_clips: int, tag: str) -> Conversation:
    """A single-turn record as a conversation (the clips' tags in front, as the processor writes them)."""
    return [
        {"role": "user", "content": tag * n_clips + "\n" + instruction},
        {"role": "assistant", "content": answer},
    ]


def generation_prompt(messages: Conversation) -> Conversation:
    """The conversation without its last assistant turn: what a model answers at evaluation."""
    return list(messages[:-1]) if messages and messages[-1]["role"] == "assistant" else list(messages)
