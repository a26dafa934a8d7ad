"""``AudiomoeProcessor``: :class:`~audiomoe.models.processor.AudioLanguageProcessor` for ``AutoProcessor``.

The same processor (chat template, ``<audio>`` tag expanded to the model's placeholder count, features); the only
addition is finding the length function in a transformers-native directory, from ``config.json``'s encoder and
adapter sub-configs (skeletons on the meta device, no weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audiomoe.models.directory import audio_token_lengths_of
from audiomoe.models.hf.configuration_audiomoe import AudiomoeConfig
from audiomoe.models.processor import AudioLanguageProcessor


class AudiomoeProcessor(AudioLanguageProcessor):
    @classmethod
    def from_pretrained(
        cls, directory: str | Path, audio_token_lengths: Any = None, **kwargs: Any
    ) -> AudiomoeProcessor:
        """Load from a native model directory; ``kwargs`` are what ``AutoProcessor`` passes: ``trust_remote_code``
        goes on to the tokenizer and feature extractor (they read ``config.json``, whose ``auto_map`` is ours)."""
        if audio_token_lengths is None:
            config = AudiomoeConfig.from_pretrained(str(directory)).to_lalm_config()
            audio_token_lengths = audio_token_lengths_of(config.encoder, config.adapter)
        trust = {"trust_remote_code": kwargs.get("trust_remote_code", True)}
        return super().from_pretrained(directory, audio_token_lengths=audio_token_lengths, **trust)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """What ``AutoProcessor`` calls on a remote-code processor class (as ``ProcessorMixin`` has it)."""
        cls._auto_class = auto_class
