"""The toy regression both multi-process tests train (test_train_ddp, test_train_reshard), and their launcher's
port picker. Imported by name: pytest's rootdir-relative imports and torchrun's script directory both find it."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import torch
from torch import nn

X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
Y = torch.sin(X).sum(-1)


@dataclass
class Out:
    loss: torch.Tensor
    aux_loss: torch.Tensor


class Toy(nn.Module):
    """y = sum(sin(x)) by a 5-32-1 MLP; ``aux`` weighs a small penalty that stands in for a router's aux loss."""

    def __init__(self, aux: float = 1e-2) -> None:
        super().__init__()
        self.aux = aux
        self.net = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Out:
        pred = self.net(x).squeeze(-1)
        aux = self.aux * pred.pow(2).mean()
        return Out(nn.functional.mse_loss(pred, y) + aux, aux)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
