"""Text + audio -> the batch :class:`~audiomoe.models.lalm.AudioLanguageModel` takes.

The audio placeholder contract (as Qwen2-Audio / Ultravox): a prompt holds one ``<audio>`` tag per clip; the
processor renders the conversation with the tokenizer's chat template and expands each tag into exactly
``N = audio_token_lengths(valid input frames)`` placeholder tokens (``<|audio|>``), where ``audio_token_lengths``
is ``adapter.output_lengths(encoder.output_lengths(·))`` of the model. The model overwrites those embedding
positions with the adapter's outputs, in order. Labels are -100 on the prompt, the placeholders and padding, so
the loss falls on the assistant's answer and its end-of-turn token(s) only.

Long audio is never truncated: features cover the whole clip and the encoder splits them into its windows
(30 s for Whisper) whose outputs are concatenated. With ``long_audio="error"`` a clip longer than one window is
rejected with a clear message instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, PreTrainedTokenizerBase

from audiomoe.config import ConfigError, from_dict, to_dict
from audiomoe.models.directory import audio_token_lengths_from_dir, read_json

PROCESSOR_CONFIG = "processor_config.json"
IGNORE_INDEX = -100
TEXT_MEMO_SIZE = 65536  # rendered prompt/answer pairs a processor keeps

Message = dict[str, str]
Conversation = list[Message]


@dataclass
class ProcessorConfig:
    """How prompts and audio become tokens."""

    audio_tag: str = "<audio>"  # what prompts contain, one per clip
    audio_token: str = (
        "<|audio|>"  # placeholder token added to the tokenizer; never looked up in the embedding
    )
    sampling_rate: int = 16000
    long_audio: Literal["split", "error"] = (
        "split"  # clips longer than the encoder window: windows, or an error
    )
    system_prompt: str = ""  # prepended as a system message when a conversation has none


class AudioLanguageProcessor:
    """Tokenizer + feature extractor + the model's audio-token length function.

    ``__call__(prompts, audios, answers=None)`` returns a dict of tensors:

    - ``input_ids`` / ``attention_mask``: ``(B, L)``; right-padded when ``answers`` are given (training),
      left-padded otherwise (generation);
    - ``labels``: ``(B, L)`` (only with ``answers``): answer tokens, -100 elsewhere;
    - ``audio_features``: ``(N, n_mels, T)`` (or ``(N, S)`` for waveform encoders) and ``audio_lengths``
      ``(N,)`` valid input frames, for the ``N`` clips in ``<audio>``-tag order over the batch (only with clips).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        feature_extractor: Any,
        audio_token_lengths: Callable[[torch.Tensor], torch.Tensor],
        config: ProcessorConfig | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.audio_token_lengths = audio_token_lengths
        self.config = config or ProcessorConfig()
        self._text_memo: dict[str, tuple[list[list[int]], list[int] | None]] = {}
        if self.config.audio_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([self.config.audio_token], special_tokens=True)
        self.audio_token_id: int = tokenizer.convert_tokens_to_ids(self.config.audio_token)
        if tokenizer.chat_template is None:
            raise ConfigError("the tokenizer has no chat template; use an instruct model's tokenizer")
        self.pad_token_id: int = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        fe_rate = getattr(feature_extractor, "sampling_rate", self.config.sampling_rate)
        if fe_rate != self.config.sampling_rate:
            raise ConfigError(
                f"processor.sampling_rate {self.config.sampling_rate} != feature extractor's {fe_rate}"
            )

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def window_seconds(self) -> float | None:
        """The encoder window (Whisper: ``chunk_length``), or None for encoders without one."""
        return getattr(self.feature_extractor, "chunk_length", None)

    def __call__(
        self,
        prompts: Sequence[str | Conversation],
        audios: Sequence[np.ndarray | Sequence[np.ndarray]] = (),
        answers: Sequence[str] | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``prompts``: one per sample, a user message (str) or a list of chat messages. ``audios``: 16 kHz mono
        float arrays, either flat in ``<audio>``-tag order over the batch, or one list per sample (then a prompt
        without tags gets one tag per clip prepended). ``answers``: assistant replies to train on."""
        conversations, clips = self._align(prompts, audios)
        if answers is not None and len(answers) != len(conversations):
            raise ValueError(f"{len(answers)} answers for {len(conversations)} prompts")
        features, lengths = self.extract_features(clips)
        n_tokens = self.audio_token_lengths(lengths).tolist() if clips else []
        rows, label_rows, clip = [], [], 0
        for i, conversation in enumerate(conversations):
            segment_ids, answer_ids = self._text_ids(conversation, None if answers is None else answers[i])
            ids: list[int] = []
            for j, segment in enumerate(segment_ids):
                if j:
                    ids += [self.audio_token_id] * int(n_tokens[clip])
                    clip += 1
                ids += segment
            labels = [IGNORE_INDEX] * len(ids)
            if answer_ids is not None:
                ids, labels = ids + answer_ids, labels + answer_ids
            rows.append(ids)
            label_rows.append(labels)
        side = padding_side or ("right" if answers is not None else "left")
        batch = self._pad(rows, label_rows, side)
        if answers is None:
            batch.pop("labels")
        if clips:
            batch["audio_features"], batch["audio_lengths"] = features, lengths
        return batch

    def extract_features(self, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips -> padded features ``(N, n_mels, T)`` / ``(N, S)`` and valid lengths ``(N,)``.

        Each clip is featurised alone (no truncation), so its features do not depend on its batch mates. Autocast
        is off here: features are data, not model compute (under a caller's bf16 autocast transformers' Whisper
        extractor would run its mel matmul in bf16 and fail converting it to numpy, and features would depend on
        the consumer's precision)."""
        if not clips:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return self._extract(clips)

    def _extract(self, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.window_seconds
        feats, lengths = [], []
        for k, clip in enumerate(clips):
            clip = _check_clip(clip, k)
            seconds = len(clip) / self.config.sampling_rate
            if self.config.long_audio == "error" and window and seconds > window:
                raise ValueError(
                    f"audio clip {k} lasts {seconds:.1f} s, longer than the encoder window of {window} s; cut it, "
                    "or set processor.long_audio=split to encode it in windows"
                )
            out = self.feature_extractor(
                [clip],
                sampling_rate=self.config.sampling_rate,
                padding="longest",
                truncation=False,
                return_attention_mask=True,
                return_tensors="pt",
            )
            values = out["input_features"] if "input_features" in out else out["input_values"]
            feats.append(values[0])
            lengths.append(int(out["attention_mask"][0].sum()))
        longest = max(f.shape[-1] for f in feats)
        padded = torch.stack([torch.nn.functional.pad(f, (0, longest - f.shape[-1])) for f in feats])
        return padded, torch.tensor(lengths, dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        self.feature_extractor.save_pretrained(str(directory))
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        audio_token_lengths: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **load_kwargs: Any,
    ) -> AudioLanguageProcessor:
        """Load from a model directory. Without ``audio_token_lengths`` the model's encoder and adapter are built
        on the meta device (no weights) from the directory's config to get it. ``load_kwargs`` (e.g.
        ``trust_remote_code``) go to the tokenizer's and feature extractor's ``from_pretrained``."""
        directory = Path(directory)
        if not (directory / PROCESSOR_CONFIG).is_file():
            raise FileNotFoundError(
                f"{directory}: no {PROCESSOR_CONFIG}; is this an audiomoe model directory?"
            )
        config = from_dict(ProcessorConfig, read_json(directory / PROCESSOR_CONFIG), "processor")
        if audio_token_lengths is None:
            audio_token_lengths = audio_token_lengths_from_dir(directory)
        for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
            if (directory / name).is_file():
                read_json(directory / name)  # transformers' own message names neither file nor line
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **load_kwargs)
        feature_extractor = AutoFeatureExtractor.from_pretrained(str(directory), **load_kwargs)
        return cls(tokenizer, feature_extractor, audio_token_lengths, config)

    # -- helpers ------------------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _align(
        self, prompts: Sequence[str | Conversation], audios: Sequence[Any]
    ) -> tuple[list[Conversation], list[np.ndarray]]:
        """Prompts -> conversations (with a system message if configured) and the flat clip list in tag order."""
        tag = self.config.audio_tag
        nested = len(audios) > 0 and all(isinstance(a, (list, tuple)) for a in audios)
        if nested and len(audios) != len(prompts):
            raise ValueError(f"{len(audios)} per-sample audio lists for {len(prompts)} prompts")
        conversations, clips = [], []
        for i, prompt in enumerate(prompts):
            messages = (
                [{"role": "user", "content": prompt}]
                if isinstance(prompt, str)
                else [dict(m) for m in prompt]
            )
            if not messages or any("role" not in m or "content" not in m for m in messages):
                raise ValueError(f"prompt {i}: a conversation is a list of {{'role', 'content'}} messages")
            n_tags = sum(m["content"].count(tag) for m in messages)
            if nested:
                sample_clips = list(audios[i])
                if n_tags == 0 and sample_clips:
                    first_user = next(m for m in messages if m["role"] == "user")
                    first_user["content"] = tag * len(sample_clips) + "\n" + first_user["content"]
                elif n_tags != len(sample_clips):
                    raise ValueError(
                        f"prompt {i} holds {n_tags} {tag} tag(s) but {len(sample_clips)} clip(s) were given"
                    )
                clips += sample_clips
            if self.config.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.config.system_prompt})
            conversations.append(messages)
        if not nested:
            clips = list(audios)
            n_tags = sum(m["content"].count(tag) for c in conversations for m in c)
            if n_tags != len(clips):
                raise ValueError(
                    f"the prompts hold {n_tags} {tag} tag(s) but {len(clips)} audio clip(s) were given; "
                    f"write one {tag} per clip"
                )
        return conversations, clips

    def _text_ids(
        self, conversation: Conversation, answer: str | None
    ) -> tuple[list[list[int]], list[int] | None]:
        """The token ids of the rendered prompt's pieces between ``<audio>`` tags, and of the answer turn.

        Memoised: a training run renders the same few hundred prompts and answers every epoch, and the chat
        template (Jinja) plus the tokenizer took ~8% of a cached-feature demo step. Callers get copies."""
        key = json.dumps([conversation, answer], default=str)
        hit = self._text_memo.get(key)
        if hit is None:
            prompt = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
            segments = [self._encode(s) for s in prompt.split(self.config.audio_tag)]
            answer_ids = (
                None if answer is None else self._encode(self._answer_text(conversation, prompt, answer))
            )
            if len(self._text_memo) >= TEXT_MEMO_SIZE:
                self._text_memo.clear()  # bounded: free-text prompts of a large corpus never repeat
            hit = self._text_memo[key] = (segments, answer_ids)
        segments, answer_ids = hit
        return [list(s) for s in segments], None if answer_ids is None else list(answer_ids)

    def _answer_text(self, conversation: Conversation, prompt: str, answer: str) -> str:
        """The assistant turn as the chat template renders it after ``prompt`` (answer + end-of-turn)."""
        full = self.tokenizer.apply_chat_template(
            [*conversation, {"role": "assistant", "content": answer}], tokenize=False
        )
        if full.startswith(prompt):
            return full[len(prompt) :]
        # Templates that rewrite earlier turns: fall back to the answer followed by EOS.
        return answer + (self.tokenizer.eos_token or "")

    def _pad(self, rows: list[list[int]], label_rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (row, lab) in enumerate(zip(rows, label_rows)):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[b, span], labels[b, span], mask[b, span] = torch.tensor(row), torch.tensor(lab), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _check_clip(clip: Any, index: int) -> np.ndarray:
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 1:
        raise ValueError(
            f"audio clip {index}: expected mono samples (T,), got shape {clip.shape}; mix to mono first"
        )
    if clip.size == 0:
        raise ValueError(f"audio clip {index} is empty")
    if not np.isfinite(clip).all():
        raise ValueError(f"audio clip {index} holds NaN/inf samples")
    return clip
