"""Small feed-forward blocks shared by the dense adapters and the MoE's shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from audiomoe.adapters.kernels import silu_mul


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; parameter names follow transformers' ``*MLP`` (gate/up/down_proj)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(input_dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(input_dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, output_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


class FFN(nn.Module):
    """The paper's expert/FFN: ``Linear(SiLU(Linear(LayerNorm(x))))``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.up_proj = nn.Linear(input_dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, output_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.up_proj(self.norm(x))))


FEEDFORWARDS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "ffn": FFN}


def build_feedforward(kind: str, input_dim: int, hidden_dim: int, output_dim: int) -> nn.Module:
    if kind not in FEEDFORWARDS:
        raise ValueError(f"feed-forward type {kind!r} is unknown; choose one of {sorted(FEEDFORWARDS)}")
    return FEEDFORWARDS[kind](input_dim, hidden_dim, output_dim)
