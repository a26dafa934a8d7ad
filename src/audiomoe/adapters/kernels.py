"""Grouped expert matmul kernels, chosen by config: ``loop`` (reference, any device), ``grouped_mm``
(``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``) and ``auto`` (grouped_mm where it applies).

A kernel computes ``out[rows of expert e] = x[rows of expert e] @ weight[e].T`` for rows sorted by expert:
x ``(S, K)``, weight ``(E, N, K)`` (the nn.Linear / transformers v5 layout), counts ``(E,)`` -> ``(S, N)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GroupedLinear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def loop_grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Reference: one ``F.linear`` per expert over its contiguous slice of rows."""
    chunks = x.split(counts.tolist())
    outs = [F.linear(chunk, weight[e]) for e, chunk in enumerate(chunks)]
    return torch.cat(outs) if outs else x.new_zeros(0, weight.shape[1])


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects expanded
    (stride-0) gradients such as the one ``out.sum()`` produces."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad.contiguous()


def grouped_mm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """grouped_mm needs a kernel for the device, 16-byte aligned rows, and on CUDA an SM80+ GPU."""
    if _GROUPED_MM is None or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    if x.device.type not in ("cpu", "cuda"):
        return False
    row_bytes = 16 // x.element_size()
    return weight.shape[1] % row_bytes == 0 and weight.shape[2] % row_bytes == 0


def grouped_mm_grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """One fused call over all experts; offsets are the int32 cumulative row counts. Falls back to the loop
    where grouped_mm does not apply (no kernel, unaligned rows)."""
    # grouped_mm is not autocast-aware: follow autocast by hand so it matches F.linear in the loop kernel
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    elif x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    if not grouped_mm_supported(x, weight):
        return loop_grouped_linear(x, weight, counts)
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    out = _GROUPED_MM(x.contiguous(), weight.transpose(-2, -1), offs=offsets)
    return _ContiguousGrad.apply(out) if out.requires_grad else out


KERNELS: dict[str, GroupedLinear] = {
    "loop": loop_grouped_linear,
    "grouped_mm": grouped_mm_grouped_linear,
    "auto": grouped_mm_grouped_linear,  # grouped_mm where it applies, else the loop
}


def get_kernel(name: str) -> GroupedLinear:
    if name not in KERNELS:
        raise ValueError(f"expert kernel {name!r} is unknown; choose one of {sorted(KERNELS)}")
    return KERNELS[name]
