"""Self-supervised speech encoders (wav2vec2, HuBERT, WavLM, ...) as registered :class:`AudioEncoder` s.

Any transformers model that takes raw 16 kHz waveforms (``input_values``), returns ``last_hidden_state`` and has a
convolutional feature encoder with ``_get_feat_extract_output_lengths`` fits. Sources:

- ``EncoderConfig.path``: a local transformers directory (``config.json`` + weights, optionally
  ``preprocessor_config.json``);
- ``EncoderConfig.config``: a config dict for random init; its ``model_type`` defaults to the registry name
  (``wav2vec2`` / ``hubert`` / ``wavlm``; ``ssl`` needs it given).

These models have no fixed window (convolutional relative positions), so long audio is encoded whole.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    PreTrainedModel,
    Wav2Vec2FeatureExtractor,
)

from audiomoe.config import ConfigError
from audiomoe.models.base import (
    AudioEncoder,
    EncoderConfig,
    check_output_layers,
    mix_hidden_states,
    register_encoder,
)
from audiomoe.tensors import lengths_to_mask

SSL_FAMILIES = ("wav2vec2", "hubert", "wavlm")


class SSLAudioEncoder(AudioEncoder):
    """forward: waveforms ``(B, S)`` (normalised by :attr:`feature_extractor`), lengths ``(B,)`` samples ->
    hidden ``(B, T_enc, C)`` (one frame per 20 ms for the usual conv stack), mask ``(B, T_enc)``."""

    def __init__(self, model: PreTrainedModel, config: EncoderConfig, feature_extractor: Any) -> None:
        super().__init__()
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise ConfigError(
                f"encoder: {type(model).__name__} has no convolutional feature encoder (not an SSL model)"
            )
        self.config = config
        self.model = model
        check_output_layers(config, model.config.num_hidden_layers)
        self.hidden_size = model.config.hidden_size * max(1, len(config.output_layers))
        self.num_hidden_states = model.config.num_hidden_layers + 1
        self.sampling_rate = getattr(feature_extractor, "sampling_rate", 16000)
        self._feature_extractor = feature_extractor
        # wav2vec2-base style models (group norm in the conv stack) were trained without an attention mask:
        # they expect zero padding instead (transformers' documented convention).
        self.use_attention_mask = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        self.layer_weights = (
            nn.Parameter(torch.zeros(model.config.num_hidden_layers + 1))
            if config.layer_weighted_sum
            else None
        )

    @property
    def feature_extractor(self) -> Any:
        return self._feature_extractor

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames after the conv stack for ``input_lengths`` samples."""
        return self.model._get_feat_extract_output_lengths(input_lengths).long()

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 2:
            raise ValueError(
                f"{self.config.type} encoder expects waveforms (B, samples), got {tuple(inputs.shape)}; "
                "make them with encoder.feature_extractor"
            )
        lengths = lengths.to(inputs.device).long()
        sample_mask = lengths_to_mask(lengths, inputs.shape[1])
        inputs = inputs.to(next(self.model.parameters()).dtype) * sample_mask
        out = self.model(
            input_values=inputs,
            attention_mask=sample_mask.long() if self.use_attention_mask else None,
            output_hidden_states=self.layer_weights is not None or bool(self.config.output_layers),
        )
        if out.hidden_states is None:
            hidden = out.last_hidden_state
        else:
            hidden = mix_hidden_states(out.hidden_states, self.config, self.layer_weights)
        frames = self.output_lengths(lengths)
        mask = lengths_to_mask(frames.to(hidden.device), hidden.shape[1])
        return hidden, mask


def _default_feature_extractor(model_config: Any) -> Wav2Vec2FeatureExtractor:
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=getattr(model_config, "feat_extract_norm", "layer") == "layer",
    )


def build_ssl_encoder(config: EncoderConfig, family: str | None = None) -> SSLAudioEncoder:
    """Registry entry for ``ssl`` (family from the config) and ``wav2vec2`` / ``hubert`` / ``wavlm``."""
    if config.path:
        path = Path(config.path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"encoder.path {config.path!r}: no config.json (expected a transformers directory)"
            )
        model = AutoModel.from_pretrained(path)
        if family and model.config.model_type != family:
            raise ConfigError(f"encoder.path holds a {model.config.model_type!r} model, not {family!r}")
        has_fe = (path / "preprocessor_config.json").is_file()
        feature_extractor = AutoFeatureExtractor.from_pretrained(path) if has_fe else None
    else:
        options = dict(config.config or {})
        model_type = options.pop("model_type", family)
        if not model_type:
            raise ConfigError(f"encoder.config needs model_type (one of {list(SSL_FAMILIES)}) for type 'ssl'")
        try:
            model_config = AutoConfig.for_model(model_type, **options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"encoder.config is not a valid {model_type} config: {err}") from None
        model = AutoModel.from_config(model_config)
        feature_extractor = None
    return SSLAudioEncoder(
        model.eval(), config, feature_extractor or _default_feature_extractor(model.config)
    )


register_encoder("ssl")(build_ssl_encoder)
for _family in SSL_FAMILIES:
    register_encoder(_family)(functools.partial(build_ssl_encoder, family=_family))
