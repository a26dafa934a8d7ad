"""Tensor helpers every layer uses (bottom layer: imports nothing from audiomoe)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool mask."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def mask_to_lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.long().sum(-1)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Tensors in a (nested) mapping / list / tuple moved to ``device``; anything else passed through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
