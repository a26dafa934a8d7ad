"""Encoder contract and registry (encoders are registry entries, not ``if`` chains).

An :class:`AudioEncoder` turns a batch of waveform features into frame features::

    features (B, n_mels, T_mel) or waveforms (B, S)  ->  hidden (B, T_enc, C), mask (B, T_enc)

``feature_extractor`` is the transformers feature extractor that makes its inputs from 16 kHz audio;
``output_lengths`` maps per-clip input lengths (mel frames or samples) to valid encoder frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    # Hidden states concatenated along channels instead of the last alone: 0 = the embedding output, i = the
    # output of block i, -1 = the last (final-normed). Early layers keep what the last one is trained to drop
    # (speaker, pitch, timbre: see the README's layer probe); ``[]`` = the last only.
    output_layers: list[int] = field(default_factory=list)
    trim_to_clip: bool = True  # encode at the clip's own length (Whisper: slice the positional table)


def check_output_layers(config: EncoderConfig, num_layers: int) -> None:
    """Reject ``output_layers`` outside ``[-(num_layers + 1), num_layers]`` or combined with a layer mix."""
    if config.output_layers and config.layer_weighted_sum:
        raise ConfigError("encoder: output_layers and layer_weighted_sum exclude each other; set one of them")
    bad = [i for i in config.output_layers if not -(num_layers + 1) <= i <= num_layers]
    if bad:
        raise ConfigError(
            f"encoder.output_layers {bad} out of range: this encoder has states 0 (embedding) .. {num_layers} "
            "(-1 = the last)"
        )


def mix_hidden_states(
    states: Sequence[torch.Tensor], config: EncoderConfig, layer_weights: torch.Tensor | None
) -> torch.Tensor:
    """The encoder's output from its hidden states ``L + 1`` x ``(B, T, C)`` (embedding output first, the
    final-normed last state last): the last; a softmax-weighted sum (``layer_weights``); or the concatenation of
    ``config.output_layers`` -> ``(B, T, C * len(output_layers))``."""
    if config.output_layers:
        return torch.cat([states[i] for i in config.output_layers], dim=-1)
    if layer_weights is None:
        return states[-1]
    weights = torch.softmax(layer_weights, dim=0).to(states[-1].dtype)
    return torch.einsum("l,lbtc->btc", weights, torch.stack(list(states)))


class AudioEncoder(nn.Module):
    """Base class of audio encoders. ``hidden_size`` is the width of what ``forward`` returns (the state width
    times ``len(config.output_layers)`` when layers are concatenated)."""

    config: EncoderConfig
    hidden_size: int
    num_hidden_states: int  # the embedding output and every block's: what output_layers indexes
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
