"""Dense baseline adapters: ``linear`` (Qwen2-Audio), ``mlp`` (Ultravox SwiGLU / the paper's dense FFN twin),
``conv`` (SLAM-LLM conv1d-linear) and ``qformer`` (SALMONN window-level Q-Former).

All map ``(B, T, C)`` + mask ``(B, T)`` to ``(B, T', D)`` + mask through the shared :class:`DownsampleFront`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from audiomoe.adapters.base import Adapter, AdapterConfig, AdapterOutput, register_adapter
from audiomoe.adapters.front import DownsampleFront
from audiomoe.adapters.layers import build_feedforward
from audiomoe.config import ConfigError
from audiomoe.tensors import lengths_to_mask, mask_to_lengths


def _front(config: AdapterConfig, fuse_dim: int | None = None) -> DownsampleFront:
    return DownsampleFront(config.downsample, config.downsample_factor, config.input_dim, fuse_dim)


@dataclass
class LinearAdapterConfig(AdapterConfig):
    type: str = "linear"


@register_adapter("linear", LinearAdapterConfig)
class LinearAdapter(Adapter):
    """front -> Linear(C' -> D)."""

    def __init__(self, config: LinearAdapterConfig) -> None:
        super().__init__(config)
        self.front = _front(config)
        self.proj = nn.Linear(self.front.output_dim, config.output_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        x, out_mask = self.front(features, self.validate_input(features, mask))
        return self.dense_output(self.proj(x), out_mask)


@dataclass
class MLPAdapterConfig(AdapterConfig):
    type: str = "mlp"
    hidden_dim: int = 4096
    mlp_type: Literal["swiglu", "ffn"] = "swiglu"  # ffn = LN -> Linear -> SiLU -> Linear (the paper's block)
    pre_norm: bool = True  # LayerNorm on the front's output (the ffn block carries its own)
    post_norm: bool = False  # LayerNorm on the output, as the paper's aggregation
    fuse_dim: int | None = None  # the paper's fusion of stacked frames (LN -> Linear -> SiLU -> LN)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_dim < 1:
            raise ConfigError(f"hidden_dim must be >= 1, got {self.hidden_dim}")


@register_adapter("mlp", MLPAdapterConfig)
class MLPAdapter(Adapter):
    """front -> [LN] -> SwiGLU or FFN (C' -> hidden -> D) -> [LN]."""

    def __init__(self, config: MLPAdapterConfig) -> None:
        super().__init__(config)
        self.front = _front(config, config.fuse_dim)
        d_in = self.front.output_dim
        self.norm_in = (
            nn.LayerNorm(d_in) if config.pre_norm and config.mlp_type == "swiglu" else nn.Identity()
        )
        self.mlp = build_feedforward(config.mlp_type, d_in, config.hidden_dim, config.output_dim)
        self.norm_out = nn.LayerNorm(config.output_dim) if config.post_norm else nn.Identity()

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        x, out_mask = self.front(features, self.validate_input(features, mask))
        return self.dense_output(self.norm_out(self.mlp(self.norm_in(x))), out_mask)


@dataclass
class ConvAdapterConfig(AdapterConfig):
    type: str = "conv"
    downsample: Literal["conv"] = "conv"
    hidden_dim: int = 2048


@register_adapter("conv", ConvAdapterConfig)
class ConvAdapter(Adapter):
    """SLAM-LLM style: Conv1d(C, C, k, stride k) -> ReLU -> Linear(C -> hidden) -> ReLU -> Linear(hidden -> D)."""

    def __init__(self, config: ConvAdapterConfig) -> None:
        super().__init__(config)
        self.front = _front(config)
        self.mlp = nn.Sequential(
            nn.ReLU(),
            nn.Linear(config.input_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.output_dim),
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        x, out_mask = self.front(features, self.validate_input(features, mask))
        return self.dense_output(self.mlp(x), out_mask)


@dataclass
class QFormerAdapterConfig(AdapterConfig):
    type: str = "qformer"
    downsample: Literal["stack", "avgpool", "conv", "none"] = "none"
    downsample_factor: int = 1
    window: int = 8  # frames (after the front) per window
    num_queries: int = 1  # learned queries per window -> output tokens per window
    hidden_dim: int = 256
    num_layers: int = 2
    num_heads: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("window", "num_queries", "hidden_dim", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}")


@register_adapter("qformer", QFormerAdapterConfig)
class QFormerAdapter(Adapter):
    """Window-level Q-Former: per window of ``window`` frames, ``num_queries`` learned queries attend (with
    self-attention among themselves) to the window's valid frames; each query becomes one LLM token."""

    def __init__(self, config: QFormerAdapterConfig) -> None:
        super().__init__(config)
        self.front = _front(config)
        h = config.hidden_dim
        self.in_proj = nn.Linear(self.front.output_dim, h)
        self.queries = nn.Parameter(torch.randn(config.num_queries, h) * 0.02)
        self.window_pos = nn.Parameter(torch.randn(config.window, h) * 0.02)
        layer = nn.TransformerDecoderLayer(h, config.num_heads, 4 * h, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerDecoder(layer, config.num_layers)
        self.out_proj = nn.Linear(h, config.output_dim)

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        tokens = self.front.output_lengths(input_lengths)
        return torch.div(tokens + c.window - 1, c.window, rounding_mode="floor") * c.num_queries

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        c = self.config
        mask = self.validate_input(features, mask)
        x, fmask = self.front(features, mask)
        b, t, _ = x.shape
        pad = (-t) % c.window
        x = F.pad(self.in_proj(x), (0, 0, 0, pad))
        fmask = F.pad(fmask, (0, pad))
        n_win = (t + pad) // c.window
        memory = x.reshape(b * n_win, c.window, -1) + self.window_pos
        key_pad = ~fmask.reshape(b * n_win, c.window)
        key_pad[:, 0] = False  # an all-padding window would give NaN attention; its outputs are masked below
        queries = self.queries.unsqueeze(0).expand(b * n_win, -1, -1)
        y = self.blocks(queries, memory, memory_key_padding_mask=key_pad)
        y = self.out_proj(y).reshape(b, n_win * c.num_queries, -1)
        out_mask = lengths_to_mask(self.output_lengths(mask_to_lengths(mask)), y.shape[1])
        return self.dense_output(y, out_mask)
