"""Adapter speed: the MoE-Adapter vs a dense SwiGLU of equal active FLOPs vs transformers' Qwen2-MoE block.

Every arm runs in the same process on the same input; arms are interleaved round-robin and timed repeatedly, and
we report medians, so a slow spell on a noisy machine hits all arms alike. Ratios (< 1 means the MoE is faster):
``moe_over_dense`` = MoE time / dense time, ``moe_over_hf_best`` = MoE time / fastest transformers backend
(square shapes only: that block maps H -> H).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from audiomoe import runtime
from audiomoe.adapters import build_adapter
from audiomoe.adapters.moe import MoELayer


@dataclass
class Shape:
    name: str
    tokens: int  # tokens entering the MoE layer (after downsampling)
    input_dim: int
    output_dim: int
    num_experts: int
    top_k: int
    expert_hidden_dim: int
    shared_hidden_dim: int


SHAPES = [
    # CPU-small: ~4k frames of width 512, 8 experts top-2, one shared expert
    Shape(
        "cpu-small",
        tokens=4096,
        input_dim=512,
        output_dim=512,
        num_experts=8,
        top_k=2,
        expert_hidden_dim=512,
        shared_hidden_dim=512,
    ),
    # Whisper-large (1280-d, 4 frames stacked) -> 7B LLM (3584-d): 8 s of audio = 100 tokens/clip, 8 clips
    Shape(
        "whisper-large-to-7b",
        tokens=800,
        input_dim=1280 * 4,
        output_dim=3584,
        num_experts=8,
        top_k=2,
        expert_hidden_dim=1024,
        shared_hidden_dim=1024,
    ),
    # square and wide, as a Qwen3-1.7B-sized block, for the transformers comparison at LLM width
    Shape(
        "square-2048",
        tokens=1024,
        input_dim=2048,
        output_dim=2048,
        num_experts=8,
        top_k=2,
        expert_hidden_dim=768,
        shared_hidden_dim=768,
    ),
]


@dataclass
class ArmResult:
    forward_ms: float
    forward_backward_ms: float
    forward_all_ms: list[float] = field(default_factory=list)
    forward_backward_all_ms: list[float] = field(default_factory=list)


class _DenseSwiGLU(nn.Module):
    """The dense arm: one SwiGLU whose width equals the MoE's active width (k routed + shared)."""

    def __init__(self, h: int, width: int, o: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(h, 2 * width, bias=False)
        self.down = nn.Linear(width, o, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(torch.nn.functional.silu(gate) * up)


def _moe_layer(shape: Shape, kernel: str) -> MoELayer:
    adapter = build_adapter(
        {
            "type": "moe",
            "input_dim": shape.input_dim,
            "output_dim": shape.output_dim,
            "downsample": "none",
            "downsample_factor": 1,
            "num_experts": shape.num_experts,
            "top_k": shape.top_k,
            "expert_hidden_dim": shape.expert_hidden_dim,
            "shared_hidden_dim": shape.shared_hidden_dim,
            "shared_expert_gate": shape.input_dim == shape.output_dim,
            "kernel": kernel,
        }
    )
    return adapter.moe


def _hf_blocks(shape: Shape) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """transformers' Qwen2MoeSparseMoeBlock under each experts backend that runs here."""
    if shape.input_dim != shape.output_dim:
        return {}
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    blocks = {}
    # batched_mm gathers a full weight copy per (token, expert) pair: skip it where that would not fit
    per_pair_bytes = 3 * shape.expert_hidden_dim * shape.input_dim * 4
    backends = ["eager", "grouped_mm"]
    if shape.tokens * shape.top_k * per_pair_bytes < 2 * 2**30:
        backends.append("batched_mm")
    for backend in backends:
        cfg = Qwen2MoeConfig(
            hidden_size=shape.input_dim,
            moe_intermediate_size=shape.expert_hidden_dim,
            shared_expert_intermediate_size=shape.shared_hidden_dim,
            num_experts=shape.num_experts,
            num_experts_per_tok=shape.top_k,
            norm_topk_prob=True,
        )
        cfg._experts_implementation = backend
        block = Qwen2MoeSparseMoeBlock(cfg)
        for p in block.parameters():
            nn.init.normal_(p, std=shape.input_dim**-0.5)
        try:  # a backend without a kernel for this device/dtype is skipped, not fatal
            block(torch.randn(1, 16, shape.input_dim))
        except (NotImplementedError, RuntimeError):
            continue
        blocks[f"hf-{backend}"] = block
    return blocks


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def bench_shape(shape: Shape, repeats: int = 7, warmup: int = 2, dtype: torch.dtype = torch.float32) -> dict:
    torch.manual_seed(0)
    arms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "moe": _moe_layer(shape, "auto"),
        "moe-loop": _moe_layer(shape, "loop"),
        "dense": _DenseSwiGLU(
            shape.input_dim, shape.top_k * shape.expert_hidden_dim + shape.shared_hidden_dim, shape.output_dim
        ),
    }
    arms.update(_hf_blocks(shape))
    for m in arms.values():
        m.to(dtype)
    x = torch.randn(shape.tokens, shape.input_dim, dtype=dtype)
    x3 = x.unsqueeze(0)

    def run(name: str, module: nn.Module) -> torch.Tensor:
        if name.startswith("hf-"):
            return module(x3)
        out = module(x)
        return out.out if hasattr(out, "out") else out

    def forward(name: str, module: nn.Module) -> None:
        with torch.no_grad():
            run(name, module)

    def forward_backward(name: str, module: nn.Module) -> None:
        module.zero_grad(set_to_none=True)
        run(name, module).float().pow(2).mean().backward()

    results = {n: ArmResult(0.0, 0.0) for n in arms}
    for i in range(warmup + repeats):
        for name, module in arms.items():  # interleaved: every round times every arm once
            f = _time(lambda: forward(name, module))  # noqa: B023
            fb = _time(lambda: forward_backward(name, module))  # noqa: B023
            if i >= warmup:
                results[name].forward_all_ms.append(f)
                results[name].forward_backward_all_ms.append(fb)
        gc.collect()
    for r in results.values():
        r.forward_ms = statistics.median(r.forward_all_ms)
        r.forward_backward_ms = statistics.median(r.forward_backward_all_ms)
    hf = {n: r for n, r in results.items() if n.startswith("hf-")}
    out = {
        "shape": asdict(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "arms": {n: asdict(r) for n, r in results.items()},
        "moe_over_dense": {
            "forward": results["moe"].forward_ms / results["dense"].forward_ms,
            "forward_backward": results["moe"].forward_backward_ms / results["dense"].forward_backward_ms,
        },
    }
    if hf:
        best_f = min(hf, key=lambda n: hf[n].forward_ms)
        best_fb = min(hf, key=lambda n: hf[n].forward_backward_ms)
        out["moe_over_hf_best"] = {
            "forward": results["moe"].forward_ms / hf[best_f].forward_ms,
            "forward_backward": results["moe"].forward_backward_ms / hf[best_fb].forward_backward_ms,
            "hf_best_forward": best_f,
            "hf_best_forward_backward": best_fb,
        }
    return out


def run_benchmark(shapes: list[str] | None = None, repeats: int = 7, dtype: str = "auto") -> dict:
    """``dtype`` ``auto`` is bfloat16 where this machine runs bf16 natively (:func:`audiomoe.runtime.bf16_native`),
    else float32: an emulated bf16 would time the emulation, not the adapter."""
    chosen = [s for s in SHAPES if shapes is None or s.name in shapes]
    if not chosen:
        raise ValueError(f"no such shape; choose from {[s.name for s in SHAPES]}")
    if dtype == "auto":
        dtype = "bfloat16" if runtime.resolve_precision("auto", "cpu") == "bf16" else "float32"
    capability, _ = runtime.cpu_bf16_flags()
    return {
        "torch": torch.__version__,
        "cpu_model": runtime.cpu_model(),
        "cpu_capability": capability,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "shapes": {s.name: bench_shape(s, repeats=repeats, dtype=getattr(torch, dtype)) for s in chosen},
    }


def format_table(result: dict) -> str:
    lines = [
        "| shape | arm | forward ms | fwd+bwd ms |",
        "|---|---|---:|---:|",
    ]
    for name, r in result["shapes"].items():
        for arm, a in r["arms"].items():
            lines.append(f"| {name} | {arm} | {a['forward_ms']:.1f} | {a['forward_backward_ms']:.1f} |")
    lines += [
        "",
        "| shape | moe_over_dense fwd | fwd+bwd | moe_over_hf_best fwd | fwd+bwd |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["shapes"].items():
        d = r["moe_over_dense"]
        h = r.get("moe_over_hf_best")
        hf = (
            f"{h['forward']:.2f} ({h['hf_best_forward']}) | {h['forward_backward']:.2f} ({h['hf_best_forward_backward']})"
            if h
            else "n/a (not square) | n/a"
        )
        lines.append(f"| {name} | {d['forward']:.2f} | {d['forward_backward']:.2f} | {hf} |")
    return "\n".join(lines)
