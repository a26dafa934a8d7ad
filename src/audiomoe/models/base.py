"""Encoder contract and registry (encoders are registry entries, not ``if`` chains).

An :class:`AudioEncoder` turns a batch of waveform features into frame features::

    features (B, n_mels, T_mel) or waveforms (B, S)  ->  hidden (B, T_enc, C), mask (B, T_enc)

``feature_extractor`` is the transformers feature extractor that makes its inputs from 16 kHz audio;
``output_lengths`` maps per-clip input lengths (mel frames or samples) to valid encoder frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from audiomoe.config import ConfigError, from_dict


@dataclass
class EncoderConfig:
    """Which encoder and from where. ``path`` is a local transformers or CTranslate2 directory; when empty, the
    encoder is built random-init from ``config`` (a transformers config dict), which is what tests use."""

    type: str = "whisper"
    path: str = ""
    config: dict[str, Any] | None = None
    layer_weighted_sum: bool = (
        False  # learnable softmax-weighted sum of all hidden layers instead of the last
    )
    trim_to_clip: bool = True  # encode at the clip's own length (Whisper: slice the positional table)


class AudioEncoder(nn.Module):
    """Base class of audio encoders."""

    config: EncoderConfig
    hidden_size: int
    sampling_rate: int = 16000

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs ``(B, n_mels, T_mel)`` or ``(B, S)``; lengths ``(B,)`` valid input length per clip.

        Returns hidden ``(B, T_enc, C)`` and mask ``(B, T_enc)`` (True on valid frames).
        """
        raise NotImplementedError

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def feature_extractor(self) -> Any:
        raise NotImplementedError


ENCODERS: dict[str, Callable[[EncoderConfig], AudioEncoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[[EncoderConfig], AudioEncoder]], Any]:
    def deco(factory: Callable[[EncoderConfig], AudioEncoder]) -> Any:
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        ENCODERS[name] = factory
        return factory

    return deco


def build_encoder(config: EncoderConfig | dict[str, Any]) -> AudioEncoder:
    if isinstance(config, dict):
        config = from_dict(EncoderConfig, config, where="encoder")
    if config.type not in ENCODERS:
        raise ConfigError(f"encoder type {config.type!r} is unknown; choose one of {sorted(ENCODERS)}")
    return ENCODERS[config.type](config)
