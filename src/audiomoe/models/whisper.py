"""Whisper encoder (transformers ``WhisperEncoder``) as a registered :class:`AudioEncoder`.

Sources, chosen by ``EncoderConfig.path``:

- ``""``: random init from ``EncoderConfig.config`` (a ``WhisperConfig`` dict; what tests use);
- a transformers directory (``config.json`` + safetensors of ``WhisperModel`` / ``WhisperForConditionalGeneration``
  / a bare encoder): only the encoder tensors are read;
- a CTranslate2 / faster-whisper directory (``model.bin``), converted in memory by :mod:`audiomoe.models.ct2`;
- the name of an installed weights package (``tiny.en``, ``base``; see :mod:`audiomoe.models.weights`).

Lengths. transformers' ``WhisperEncoder.forward`` only accepts exactly ``2 * max_source_positions`` mel frames
(30 s). With ``trim_to_clip`` (default) we run the same modules ourselves at the batch's own length, slicing the
positional table (whisper.cpp's ``audio_ctx`` idea), and mask padded frames so a clip encodes the same alone or in a
batch. With ``trim_to_clip=False`` every window is padded to 30 s with silence and encoded exactly as Whisper does.

Long audio is never truncated: inputs longer than one window are split into 30 s windows, encoded as one batch
and their frames concatenated (:func:`split_windows` / :func:`merge_windows`), so ``output_lengths`` holds for any
length: ``T_enc = ceil(T_mel / 2)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from audiomoe.config import ConfigError
from audiomoe.models.base import (
    AudioEncoder,
    EncoderConfig,
    check_output_layers,
    mix_hidden_states,
    register_encoder,
)
from audiomoe.tensors import lengths_to_mask

# Prefixes under which the encoder sits in WhisperForConditionalGeneration / WhisperModel checkpoints.
_ENCODER_PREFIXES = ("model.encoder.", "encoder.")


def split_windows(
    features: torch.Tensor, lengths: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cut long features into fixed windows: ``(B, n_mels, T)`` -> ``(B * K, n_mels, window)``.

    ``K = ceil(T / window)``; row ``b * K + k`` is window ``k`` of clip ``b``. Returns the windows, their valid
    lengths ``(B * K,)`` (0 for windows past a clip's end) and ``K``.
    """
    batch, n_mels, total = features.shape
    n_windows = -(-total // window)
    padded = nn.functional.pad(features, (0, n_windows * window - total))
    windows = padded.view(batch, n_mels, n_windows, window).permute(0, 2, 1, 3).reshape(-1, n_mels, window)
    starts = torch.arange(n_windows, device=lengths.device) * window
    win_lengths = (lengths[:, None] - starts[None, :]).clamp(0, window).reshape(-1)
    return windows, win_lengths, n_windows


def merge_windows(hidden: torch.Tensor, n_windows: int) -> torch.Tensor:
    """Concatenate window outputs back per clip: ``(B * K, T_w, C)`` -> ``(B, K * T_w, C)``.

    Every window but a clip's last is full, so a clip's valid frames stay contiguous from frame 0.
    """
    rows, frames, channels = hidden.shape
    return hidden.reshape(rows // n_windows, n_windows * frames, channels)


def _read_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """Encoder tensors of a transformers Whisper directory (single or sharded safetensors), prefix stripped."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{path}: no model.safetensors(.index.json); save the model with save_pretrained"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                tensors[key] = handle.get_tensor(key)
    for prefix in _ENCODER_PREFIXES:
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            return state
    return tensors  # a bare WhisperEncoder checkpoint


class WhisperAudioEncoder(AudioEncoder):
    """transformers ``WhisperEncoder`` behind the :class:`AudioEncoder` contract.

    forward: features ``(B, n_mels, T_mel)`` (log-mel from :attr:`feature_extractor`), lengths ``(B,)`` valid mel
    frames -> hidden ``(B, ceil(T_mel / 2), d_model)`` (``T_mel`` padded to 30 s windows when ``trim_to_clip`` is
    off), mask ``(B, T_enc)``.
    """

    def __init__(
        self,
        encoder: WhisperEncoder,
        config: EncoderConfig,
        feature_extractor: WhisperFeatureExtractor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        wc = encoder.config
        check_output_layers(config, wc.encoder_layers)
        self.hidden_size = wc.d_model * max(1, len(config.output_layers))
        self.num_hidden_states = wc.encoder_layers + 1
        self.n_mels = wc.num_mel_bins
        self.window = 2 * wc.max_source_positions  # mel frames per window (3000 = 30 s for real Whisper)
        self._feature_extractor = feature_extractor or WhisperFeatureExtractor(
            feature_size=self.n_mels, chunk_length=max(1, self.window // 100)
        )
        # SUPERB-style learnable mix of the embedding output and every layer's output (zeros = uniform mix).
        self.layer_weights = (
            nn.Parameter(torch.zeros(wc.encoder_layers + 1)) if config.layer_weighted_sum else None
        )

    @property
    def feature_extractor(self) -> WhisperFeatureExtractor:
        return self._feature_extractor

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Valid encoder frames for ``input_lengths`` mel frames: conv2 has stride 2 (any length, any windows)."""
        return torch.div(input_lengths + 1, 2, rounding_mode="floor")

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 3 or inputs.shape[1] != self.n_mels:
            raise ValueError(
                f"whisper encoder expects log-mel features (B, {self.n_mels}, T_mel), got {tuple(inputs.shape)}; "
                "make them with encoder.feature_extractor"
            )
        lengths = lengths.to(inputs.device).long()
        if lengths.shape != (inputs.shape[0],) or bool((lengths > inputs.shape[-1]).any()):
            raise ValueError(f"lengths {lengths.tolist()} must be (B,) and <= T_mel={inputs.shape[-1]}")
        if inputs.shape[-1] > self.window:
            windows, win_lengths, n_windows = split_windows(inputs, lengths, self.window)
            used = win_lengths > 0  # windows past a short clip's end are not encoded at all
            encoded = self._encode(windows[used], win_lengths[used])
            hidden = encoded.new_zeros(windows.shape[0], *encoded.shape[1:])
            hidden[used] = encoded
            hidden = merge_windows(hidden, n_windows)
        else:
            hidden = self._encode(inputs, lengths)
        mask = (
            torch.arange(hidden.shape[1], device=hidden.device)[None, :]
            < self.output_lengths(lengths)[:, None]
        )
        return hidden, mask

    def _encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One window per row: ``(N, n_mels, T <= window)`` -> ``(N, T_enc, C)``; mirrors WhisperEncoder.forward."""
        enc = self.encoder
        features = features.to(enc.conv1.weight.dtype)
        attn_mask = None
        if self.config.trim_to_clip:
            # Zero the padding (as conv zero-padding would for the clip alone) and hide it from attention.
            frames = torch.arange(features.shape[-1], device=features.device)
            features = features * (frames[None, :] < lengths[:, None])[:, None, :]
            x = nn.functional.gelu(enc.conv1(features))
            x = x * (frames[None, :] < lengths[:, None])[:, None, :]
            x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
            valid = lengths_to_mask(self.output_lengths(lengths), x.shape[1])
            # Additive key mask (N, 1, 1, T_enc): works with eager and sdpa attention alike.
            attn_mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            attn_mask = attn_mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        else:
            features = self._pad_with_silence(features, lengths)
            x = nn.functional.gelu(enc.conv1(features))
            x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        # A view of the first T_enc rows of the positional table: no copy of the model.
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = nn.functional.dropout(x, p=enc.dropout, training=self.training)
        states = [x]
        for layer in enc.layers:
            if self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop:
                states.append(x)
                continue
            x = layer(x, attn_mask)
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return mix_hidden_states(states, self.config, self.layer_weights)

    def _pad_with_silence(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pad/fill to the full window with each clip's floor value (what Whisper's log-mel gives for silence)."""
        frames = torch.arange(features.shape[-1], device=features.device)
        valid = (frames[None, :] < lengths.clamp(min=1)[:, None])[:, None, :]
        floor = features.masked_fill(~valid, float("inf")).amin(dim=(1, 2), keepdim=True)
        features = torch.where(valid, features, floor)
        pad = self.window - features.shape[-1]
        if pad:
            features = torch.cat([features, floor.expand(-1, features.shape[1], pad)], dim=-1)
        return features


def _load_whisper_encoder(config: EncoderConfig) -> tuple[WhisperEncoder, WhisperFeatureExtractor | None]:
    """Build the transformers encoder from ``config.path`` (dir / CT2 dir / package name) or ``config.config``."""
    if not config.path:
        if not config.config:
            raise ConfigError(
                "encoder: give encoder.path (a Whisper directory) or encoder.config (a WhisperConfig dict)"
            )
        try:
            whisper_config = WhisperConfig(**config.config)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"encoder.config is not a valid WhisperConfig: {err}") from None
        return WhisperEncoder(whisper_config).eval(), None

    from audiomoe.models import ct2, weights

    path = Path(config.path).expanduser()
    if not path.exists() and config.path in weights.WHISPER_PACKAGES:
        path = weights.ct2_dir(config.path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"encoder.path {config.path!r} is not a directory (nor one of {sorted(weights.WHISPER_PACKAGES)})"
        )
    if ct2.is_ct2_dir(path):
        whisper_config, state = ct2.convert_ct2_whisper(path, verify=True)
        feature_extractor = WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins)
        state = {k[len("model.encoder.") :]: v for k, v in state.items() if k.startswith("model.encoder.")}
    else:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: neither a transformers directory (config.json) nor CTranslate2 (model.bin)"
            )
        whisper_config = WhisperConfig.from_pretrained(path)
        state = _read_encoder_state(path)
        feature_extractor = (
            WhisperFeatureExtractor.from_pretrained(path)
            if (path / "preprocessor_config.json").is_file()
            else None
        )
    encoder = WhisperEncoder(whisper_config)
    missing, _ = encoder.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path}: encoder weights missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return encoder.eval(), feature_extractor


@register_encoder("whisper")
def build_whisper_encoder(config: EncoderConfig) -> WhisperAudioEncoder:
    """Registry entry ``whisper``; see the module docstring for the accepted ``path`` values."""
    encoder, feature_extractor = _load_whisper_encoder(config)
    return WhisperAudioEncoder(encoder, config, feature_extractor)
