"""Manifest records -> LALM batches, from raw audio or from the frozen-encoder feature cache.

A record becomes one chat turn: the user message is the record's instruction with the clip in front (the
processor adds the ``<audio>`` tag, as ``audiomoe infer`` does), the assistant message its answer. With a
:class:`~audiomoe.models.feature_cache.FeatureCache` the batch carries ``encoder_hidden`` / ``encoder_mask``
instead of audio features, and the model skips its encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from audiomoe.data.manifest import AudioRecord, load_record_clips
from audiomoe.models.conversation import as_conversation, conversation_batch, generation_prompt
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.processor import AudioLanguageProcessor


class _CachedAudioProcessor(AudioLanguageProcessor):
    """The model's processor for clips whose encoder outputs are cached: each "clip" is its valid input length
    (an int), so prompts get the right number of audio placeholders without reading or featurising audio."""

    def extract_features(self, clips: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(0), torch.as_tensor([int(c) for c in clips], dtype=torch.long)


class RecordBatcher:
    """``collate(indices)`` -> the model's keyword batch for those records (training: with ``labels``)."""

    def __init__(
        self,
        records: Sequence[AudioRecord],
        processor: AudioLanguageProcessor,
        cache: FeatureCache | None = None,
    ) -> None:
        if not records:
            raise ValueError("no records to batch: is the manifest empty?")
        self.records = list(records)
        self.processor = processor
        self.cache = cache
        self._cached_processor = (
            _CachedAudioProcessor(processor.tokenizer, processor.feature_extractor, processor.audio_token_lengths,
                                  processor.config)
            if cache is not None
            else None
        )  # fmt: skip

    def collate(self, indices: Sequence[int], with_answers: bool = True) -> dict[str, torch.Tensor]:
        records = [self.records[i] for i in indices]
        return self.batch(records, [r.instruction for r in records], with_answers)

    def batch(
        self,
        records: Sequence[AudioRecord],
        prompts: Sequence[str],
        with_answers: bool = True,
        clips: Sequence[Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prompts (without ``<audio>`` tag) about the records' clips; answers from the records if asked.
        ``clips``: the records' waveforms when the caller already decoded them (a list of ``(T,)`` arrays per
        record). Records holding a whole conversation (``messages``) bring their own prompt: trained with the loss
        on every assistant turn, asked their last question at evaluation."""
        answers = [r.answer for r in records] if with_answers else None
        conversational = any(r.messages for r in records)
        if not self.reads_cache:
            if clips is None:
                clips = [self.load(r) for r in records]
            if not conversational:
                return self.processor(list(prompts), list(clips), answers=answers)
            tag = self.processor.config.audio_tag
            if with_answers:
                conversations = [
                    r.messages or as_conversation(p, r.answer, len(c), tag) for r, p, c in zip(records, prompts, clips)
                ]  # fmt: skip
                return conversation_batch(self.processor, conversations, clips)
            asked = [generation_prompt(r.messages) if r.messages else p for r, p in zip(records, prompts)]
            return self.processor(asked, list(clips), answers=None)
        if conversational:
            raise ValueError(
                "the feature cache holds one clip per record: drop it for multi-turn / multi-audio data"
            )
        hidden, mask, lengths = self.cache.batch([r.audio for r in records])
        batch = self._cached_processor(list(prompts), [[n] for n in lengths.tolist()], answers=answers)
        batch.pop("audio_features", None)
        batch.pop("audio_lengths", None)
        batch["encoder_hidden"], batch["encoder_mask"] = hidden, mask
        return batch

    @property
    def reads_cache(self) -> bool:
        """Batches come from the feature cache (encoder outputs), so no clip needs decoding."""
        return self.cache is not None and self._cached_processor is not None

    def load(self, record: AudioRecord) -> list[Any]:
        """The record's clips at the model's sampling rate, in tag order (AudioError for one that cannot be used)."""
        return load_record_clips(record, self.processor.config.sampling_rate)

    def text_batch(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Text-only prompts (the modality-gap evaluation), left-padded for generation."""
        return self.processor(list(prompts), [], answers=None)


def count_frames(batch: dict[str, torch.Tensor]) -> int:
    """Throughput unit: valid encoder frames when cached, else valid encoder-input (mel) frames."""
    if "encoder_mask" in batch:
        return int(batch["encoder_mask"].sum())
    if "audio_lengths" in batch:
        return int(batch["audio_lengths"].sum())
    return int(batch["attention_mask"].sum())
