"""Grouped expert matmul kernels, chosen by config: ``loop`` (reference, any device), ``grouped_mm``
(``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``) and ``auto`` (the faster of the two, measured).

``auto`` measures rather than assumes: which kernel wins depends on the machine, dtype and shape (on a 2-core AMD
EPYC the loop won the fp32 cpu-small forward, 174 vs 203 ms; on CPU bf16 grouped_mm is ~5x slower when the rows per
expert change between calls). The first call of each shape class (device, dtype, expert count, weight shape, rows
rounded up to a power of two, with or without backward) times both kernels on a synthetic problem of that class,
with different rows per expert in each round, and caches the winner for the process; :func:`auto_choices` lists
what was chosen and why. On CPU both kernels give bit-identical results (tested), so the choice never changes a
number, only the time.

A kernel computes ``out[rows of expert e] = x[rows of expert e] @ weight[e].T`` for rows sorted by expert:
x ``(S, K)``, weight ``(E, N, K)`` (the nn.Linear / transformers v5 layout), counts ``(E,)`` -> ``(S, N)``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

GroupedLinear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
log = logging.getLogger(__name__)


class _LoopGroupedLinear(torch.autograd.Function):
    """One GEMM per expert, written straight into the output and gradient buffers.

    Autograd over per-expert ``F.linear`` calls computed the same GEMMs but then copied everything once more: the
    outputs into one tensor (``cat``), the input gradients back together (the backward of ``split``) and the E
    weight gradients into one (the backward of ``unbind``: a full copy of the experts' weights). Measured on a
    2-core AMD EPYC Zen 3 (fp32, 2 threads, 8 experts, 1600 rows, new counts each call), fwd+bwd: 5120 -> 3584
    3343 -> 2084 ms; 1792 -> 3584 497 -> 526 ms and 512 -> 1024 180 -> 165 ms (within noise). Bit-identical to
    the per-expert ``F.linear`` (tested): the GEMMs are the same calls."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        sizes = counts.tolist()
        out = x.new_empty(x.shape[0], weight.shape[1])
        start = 0
        for expert, size in enumerate(sizes):
            if size:
                torch.mm(x[start : start + size], weight[expert].t(), out=out[start : start + size])
            start += size
        ctx.sizes = sizes
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_weight = ctx.needs_input_grad[:2]
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_weight = weight.new_empty(weight.shape) if need_weight else None
        start = 0
        # a backward run inside an autocast region must not recast: the same GEMMs as the forward's dtype
        with torch.autocast(grad.device.type, enabled=False):
            for expert, size in enumerate(ctx.sizes):
                rows = slice(start, start + size)
                if grad_x is not None and size:
                    torch.mm(grad[rows], weight[expert], out=grad_x[rows])
                if grad_weight is not None:
                    if size:
                        torch.mm(grad[rows].t(), x[rows], out=grad_weight[expert])
                    else:
                        grad_weight[expert].zero_()
                start += size
        return grad_x, grad_weight, None


def loop_grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Reference: one GEMM per expert over its contiguous slice of rows (any device). Autocast is followed by
    hand, as ``F.linear`` would (the GEMMs run in the autocast dtype, gradients flow back through the casts)."""
    x, weight = _effective(x, weight)
    with torch.autocast(x.device.type, enabled=False):
        return _LoopGroupedLinear.apply(x, weight, counts)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects expanded
    (stride-0) gradients such as the one ``out.sum()`` produces."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad.contiguous()


def _silu_mul_eager(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _silu_mul_scale_eager(gate: torch.Tensor, up: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up * scale.unsqueeze(-1).to(gate.dtype)


_FUSED: dict[bool, Callable[..., torch.Tensor]] = {}  # scaled or not -> the compiled kernel
_FUSED_FAILED = os.environ.get("AUDIOMOE_FUSED_SWIGLU", "1") == "0"  # "0": always eager (debugging)
_FUSED_DTYPES = (torch.bfloat16, torch.float16)


def reduced_precision(x: torch.Tensor) -> bool:
    """Whether the GEMMs of ``x`` run in bf16/fp16 (its dtype, or the autocast dtype where autocast is on)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    return dtype in _FUSED_DTYPES


def silu_mul(gate: torch.Tensor, up: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` (same shapes, any leading dims), times ``scale`` ``(...,)`` per row when
    given (the MoE folds its routing weights in here, see :func:`audiomoe.adapters.moe.dispatch_to_experts`;
    ``scale`` is rounded to ``gate``'s dtype first).

    In bf16/fp16 on CPU or CUDA it is one fused kernel compiled by ``torch.compile`` (dynamic shapes: compiled once
    per process, about 10 s on a 2-core CPU, then cached on disk by inductor): eager runs silu, mul and their
    backward as separate passes, each converting bf16 to fp32 and back. Measured on a 2-core Intel Xeon (AMX), one
    thread: the MoE fwd+bwd at cpu-small in bf16 703 -> 393 ms, at whisper-large-to-7b 1137 -> 1043 ms; in fp32
    it gained 2%, so fp32 stays eager. The fused kernel rounds once (fp32 inside) where eager rounds after silu
    too: results differ from eager by bf16 rounding. Where compiling fails (no C++ compiler, an unsupported
    build) it says so once and stays eager; ``AUDIOMOE_FUSED_SWIGLU=0`` turns it off."""
    global _FUSED_FAILED
    args = (gate, up) if scale is None else (gate, up, scale)
    eager = _silu_mul_eager if scale is None else _silu_mul_scale_eager
    usable = gate.dtype in _FUSED_DTYPES and gate.device.type in ("cpu", "cuda")
    if not usable or _FUSED_FAILED or torch.compiler.is_compiling():
        return eager(*args)
    scaled = scale is not None
    if scaled not in _FUSED:
        _FUSED[scaled] = torch.compile(eager, dynamic=True)
    try:
        return _FUSED[scaled](*args)
    except (
        Exception
    ) as err:  # inductor raises many types (no compiler, codegen, lowering): all mean "stay eager"
        _FUSED_FAILED = True
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        log.warning("fused SwiGLU unavailable, using eager (%s: %s)", type(err).__name__, first)
        return eager(*args)


def grouped_mm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """grouped_mm needs a kernel for the device, 16-byte aligned rows, on CUDA an SM80+ GPU, and under
    torch.compile bf16."""
    if _GROUPED_MM is None or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    # torch.compile traces grouped_mm through its fake-tensor kernel, which accepts bf16 only (torch 2.13,
    # ``_meta_grouped_mm_common``): an fp32 or fp16 MoE under torch.compile (``train.compile``) failed with a
    # TorchRuntimeError; there the loop runs (one graph break at the counts)
    if x.dtype != torch.bfloat16 and torch.compiler.is_compiling():
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


ROW_MULTIPLE = 128  # grouped_mm_padded rounds each expert's rows up to a multiple of this


def padded_grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """grouped_mm over rows padded per expert to a multiple of :data:`ROW_MULTIPLE` (zero rows, dropped after).

    Why: on CPU, oneDNN builds and caches a GEMM primitive per shape, and in bf16 a new rows-per-expert count pays
    that build on every call, which routing does every step. Rounded counts come from a small set and hit the
    cache. Measured on a 2-core Intel Xeon (AMX), bf16 forward with new counts every call: 25 -> 15 ms at
    8192 rows 512 -> 1024, 88 -> 37 ms at 1600 rows 5120 -> 2048; the padding costs at most 127 rows per expert.
    ``kernel: auto`` takes it only where its probe measures it faster."""
    xe, we = _effective(x, weight)
    if not grouped_mm_supported(xe, we):
        return loop_grouped_linear(x, weight, counts)
    padded_counts = (counts + ROW_MULTIPLE - 1) // ROW_MULTIPLE * ROW_MULTIPLE
    expert_of_row = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    row_in_expert = (
        torch.arange(x.shape[0], device=x.device) - (torch.cumsum(counts, 0) - counts)[expert_of_row]
    )
    dest = (torch.cumsum(padded_counts, 0) - padded_counts)[expert_of_row] + row_in_expert
    padded = xe.new_zeros(int(padded_counts.sum()), xe.shape[1]).index_copy(0, dest, xe)
    return grouped_mm_grouped_linear(padded, we, padded_counts).index_select(0, dest)


@dataclass(frozen=True)
class AutoChoice:
    """What ``kernel: auto`` chose for one shape class, with the probe's median times (ms)."""

    device: str
    dtype: str
    num_experts: int
    out_features: int
    in_features: int
    rows: int  # rows of the class (a power of two at or above the calls' row count)
    backward: bool
    kernel: str
    loop_ms: float
    grouped_mm_ms: float
    grouped_mm_padded_ms: float | None = None  # None: not a candidate for this class (see probed_kernels)

    def describe(self) -> str:
        mode = "fwd+bwd" if self.backward else "fwd"
        padded = (
            ""
            if self.grouped_mm_padded_ms is None
            else f", grouped_mm_padded {self.grouped_mm_padded_ms:.2f} ms"
        )
        return (
            f"expert kernel auto -> {self.kernel} for {self.device} {self.dtype} E={self.num_experts} "
            f"{self.in_features}->{self.out_features} ~{self.rows} rows {mode} "
            f"(loop {self.loop_ms:.2f} ms, grouped_mm {self.grouped_mm_ms:.2f} ms{padded})"
        )


_AUTO_CHOICES: dict[tuple, AutoChoice] = {}
_PROBE_ROUNDS = 3


def auto_choices() -> list[AutoChoice]:
    """Every choice ``kernel: auto`` made in this process, in order."""
    return list(_AUTO_CHOICES.values())


def reset_auto_choices() -> None:
    _AUTO_CHOICES.clear()


def _effective(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands as the kernels will multiply them (autocast followed by hand, as grouped_mm needs)."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return x.to(dtype), weight.to(dtype)
    return (x.to(weight.dtype), weight) if x.dtype != weight.dtype else (x, weight)


def _probe(x: torch.Tensor, weight: torch.Tensor, rows: int, backward: bool) -> AutoChoice:
    """Median time of each kernel on a synthetic problem of this class; new rows per expert every round (a
    kernel that only shines on repeated counts must not win), kernels interleaved, alternating which goes first."""
    device, dtype = x.device, x.dtype
    num_experts, n, k = weight.shape
    gen = torch.Generator().manual_seed(0)
    candidates = probed_kernels(backward)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    grad_mode = torch.enable_grad() if backward else torch.no_grad()
    with torch.inference_mode(False), grad_mode, torch.autocast(device.type, enabled=False):
        xp = torch.randn(rows, k, generator=gen).to(device, dtype).requires_grad_(backward)
        wp = weight.detach().clone().requires_grad_(backward)
        grad_out = torch.randn(rows, n, generator=gen).to(device, dtype)
        for round_ in range(_PROBE_ROUNDS + 1):  # round 0 warms up (allocator, kernel selection)
            counts = torch.multinomial(
                torch.ones(num_experts), rows, replacement=True, generator=gen
            ).bincount(minlength=num_experts)
            counts = counts.to(device)
            names = list(candidates) if round_ % 2 else list(reversed(candidates))
            for name in names:
                sync()
                start = time.perf_counter()
                out = KERNELS[name](xp, wp, counts)
                if backward:
                    torch.autograd.grad(out, (xp, wp), grad_out)
                sync()
                if round_:
                    times[name].append((time.perf_counter() - start) * 1000)
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return AutoChoice(
        device=device.type,
        dtype=str(dtype).replace("torch.", ""),
        num_experts=num_experts,
        out_features=n,
        in_features=k,
        rows=rows,
        backward=backward,
        kernel=min(medians, key=medians.__getitem__),
        loop_ms=medians["loop"],
        grouped_mm_ms=medians["grouped_mm"],
        grouped_mm_padded_ms=medians.get("grouped_mm_padded"),
    )


def auto_grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The kernel measured fastest for this call's shape class (probed on its first call, then cached); the loop
    where grouped_mm does not apply, grouped_mm while being compiled in bf16 (no timing inside a trace)."""
    xe, we = _effective(x, weight)
    if not grouped_mm_supported(xe, we):
        return loop_grouped_linear(x, weight, counts)
    if torch.compiler.is_compiling():
        return grouped_mm_grouped_linear(x, weight, counts)
    backward = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    rows = 1 << max(4, math.ceil(math.log2(max(x.shape[0], 1))))
    key = (xe.device.type, xe.device.index, xe.dtype, *weight.shape, rows, backward)
    choice = _AUTO_CHOICES.get(key)
    if choice is None:
        choice = _AUTO_CHOICES[key] = _probe(xe, we, rows, backward)
        log.info(choice.describe())
    return KERNELS[choice.kernel](x, weight, counts)


def auto_choices_as_dicts() -> list[dict]:
    return [asdict(c) for c in auto_choices()]


PROBED = ("loop", "grouped_mm", "grouped_mm_padded")  # what kernel: auto chooses between


def probed_kernels(backward: bool) -> tuple[str, ...]:
    """The candidates of a shape class. With a backward, grouped_mm_padded is left out: its zero rows change
    the weight gradient's reduction (rows are that GEMM's inner dimension), so on CPU its weight gradient differs
    from the other two in the last bits (measured: up to 3.4e-5 at 1600 rows 1536 -> 512), and a choice made by
    timing would make training depend on the machine's load. Its forward and input gradient are bit-identical."""
    return PROBED if not backward else tuple(k for k in PROBED if k != "grouped_mm_padded")


KERNELS: dict[str, GroupedLinear] = {
    "loop": loop_grouped_linear,
    "grouped_mm": grouped_mm_grouped_linear,
    "grouped_mm_padded": padded_grouped_linear,
    "auto": auto_grouped_linear,  # the fastest for this shape class, measured on first use
}


def get_kernel(name: str) -> GroupedLinear:
    if name not in KERNELS:
        raise ValueError(f"expert kernel {name!r} is unknown; choose one of {sorted(KERNELS)}")
    return KERNELS[name]
