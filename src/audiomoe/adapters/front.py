"""The downsampling front shared by all adapters: ``(B, T, C) -> (B, ceil(T/k), C_out)``.

``stack`` concatenates k consecutive frames (C_out = k*C, Ultravox / Qwen2-Audio style), ``avgpool`` averages them
(C_out = C), ``conv`` is a strided Conv1d (C_out = C), ``none`` passes frames through (k must be 1). The tail is
zero-padded to a multiple of k; the output mask is recomputed from the valid lengths, so an output token is valid
when it holds at least one valid frame. Optional ``fuse_dim`` adds the paper's fusion (LN -> Linear -> SiLU -> LN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from audiomoe.tensors import lengths_to_mask, mask_to_lengths


class DownsampleFront(nn.Module):
    def __init__(self, kind: str, factor: int, input_dim: int, fuse_dim: int | None = None) -> None:
        super().__init__()
        if kind not in ("stack", "avgpool", "conv", "none"):
            raise ValueError(f"downsample must be one of stack, avgpool, conv, none; got {kind!r}")
        if kind == "none" and factor != 1:
            raise ValueError("downsample='none' needs downsample_factor=1")
        self.kind, self.factor = kind, factor
        self.conv = (
            nn.Conv1d(input_dim, input_dim, kernel_size=factor, stride=factor) if kind == "conv" else None
        )
        stacked = input_dim * factor if kind == "stack" else input_dim
        self.fuse = (
            nn.Sequential(
                nn.LayerNorm(stacked), nn.Linear(stacked, fuse_dim), nn.SiLU(), nn.LayerNorm(fuse_dim)
            )
            if fuse_dim
            else None
        )
        self.output_dim = fuse_dim or stacked

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.factor - 1, self.factor, rounding_mode="floor")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, T, C)``, mask ``(B, T)`` -> ``(B, T', C_out)``, mask ``(B, T')``."""
        b, t, c = x.shape
        k = self.factor
        x = x * mask.unsqueeze(-1).to(x.dtype)  # padded frames must not leak into stacked/pooled tokens
        pad = (-t) % k
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        t_out = (t + pad) // k
        if self.kind == "stack":
            x = x.reshape(b, t_out, k * c)
        elif self.kind == "avgpool":
            # mean over the valid frames of each window only
            counts = F.pad(mask, (0, pad)).reshape(b, t_out, k).sum(-1, keepdim=True).clamp(min=1)
            x = x.reshape(b, t_out, k, c).sum(2) / counts.to(x.dtype)
        elif self.kind == "conv":
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out_mask = lengths_to_mask(self.output_lengths(mask_to_lengths(mask)), t_out)
        if self.fuse is not None:
            x = self.fuse(x)
        return x, out_mask
