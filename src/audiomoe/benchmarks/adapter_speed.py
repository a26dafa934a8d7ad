"""Adapter speed: the MoE-Adapter vs a dense SwiGLU of equal active FLOPs vs transformers' Qwen2-MoE block.

Every arm runs in the same process; arms are interleaved round-robin and timed repeatedly, and we report
medians, so a slow spell on a noisy machine hits all arms alike. Each round draws a **new input** (the same one for
every arm of the round): with one input reused, the rows per expert never change between calls, which hides a real
cost (CPU bf16 grouped_mm ran ~5x slower on new counts than on repeated ones). Ratios (< 1 means the MoE is
faster): ``moe_over_dense`` = MoE time / dense time, ``moe_over_hf_best`` = MoE time / fastest transformers
backend (square shapes only: that block maps H -> H). Achieved TFLOP/s use analytic FLOPs (:func:`arm_flops`).
``compiled`` adds ``torch.compile`` of the MoE and the dense arm; ``device="cuda"`` runs on the GPU.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from audiomoe import runtime
from audiomoe.adapters import build_adapter, kernels
from audiomoe.adapters.moe import MoELayer
from audiomoe.allocator import huge_pages_on


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


def _time(fn: Callable[[], object], device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1000


def active_width(shape: Shape) -> int:
    """Hidden width a token passes through: k routed experts + the shared expert (the dense arm's width)."""
    return shape.top_k * shape.expert_hidden_dim + shape.shared_hidden_dim


def arm_flops(shape: Shape, arm: str) -> dict[str, float]:
    """Analytic FLOPs of one call: a SwiGLU of the active width (2 multiply-adds per weight per token: gate and up
    ``in x 2W``, down ``W x out``), plus for the MoE arms the router (``in x E``) and the shared gate (``in x 1``,
    square shapes). Forward+backward is counted as 3x the forward (the usual convention)."""
    width = active_width(shape)
    forward = 2.0 * shape.tokens * (shape.input_dim * 2 * width + width * shape.output_dim)
    if arm != "dense" and not arm.startswith("dense-"):
        gate = 1 if shape.input_dim == shape.output_dim else 0
        forward += 2.0 * shape.tokens * shape.input_dim * (shape.num_experts + gate)
    return {"forward": forward, "forward_backward": 3 * forward}


def round_inputs(
    shape: Shape, rounds: int, dtype: torch.dtype, device: torch.device | str = "cpu", seed: int = 0
) -> list[torch.Tensor]:
    """One input ``(tokens, input_dim)`` per timing round, the same for a given seed on every machine."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape.tokens, shape.input_dim, generator=gen).to(device, dtype) for _ in range(rounds)
    ]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    capability, _ = runtime.cpu_bf16_flags()
    pages = "huge pages" if huge_pages_on() else "4 KiB pages"  # the CLI's allocator policy
    return f"{runtime.cpu_model()} ({capability}), {torch.get_num_threads()} thread(s), {pages}"


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: its k-th smallest and k-th largest, with the
    largest k whose coverage ``1 - 2·P(Binomial(n, 1/2) < k)`` is at least ``confidence`` (k = 1 where none is).
    Returns ``(low, high, coverage)``. Seven rounds give min..max (98.4%), eleven the 3rd..9th (93.5%)."""
    ordered, n = sorted(values), len(values)
    below = [math.comb(n, i) / 2**n for i in range(n + 1)]  # P(Binomial(n, 1/2) = i)
    k = 1
    while k < n - k and 1 - 2 * sum(below[: k + 1]) >= confidence:
        k += 1
    coverage = 1 - 2 * sum(below[:k])
    return ordered[k - 1], ordered[n - k], coverage


def ratios_with_intervals(arm: ArmResult, forward_base: ArmResult, backward_base: ArmResult) -> dict:
    """``arm``'s time over its base's (the ratio of the medians), forward and forward+backward, each with
    :func:`median_interval` of the per-round ratios: both arms of a round ran on the same input, back to back, so a
    slow spell of the machine moves both, and the spread of the paired ratio is the benchmark's own measure of
    how far a ratio can be read."""
    ratios: dict = {}
    for mode, base in (("forward", forward_base), ("forward_backward", backward_base)):
        ratios[mode] = getattr(arm, f"{mode}_ms") / getattr(base, f"{mode}_ms")
        per_round = [
            a / b
            for a, b in zip(getattr(arm, f"{mode}_all_ms"), getattr(base, f"{mode}_all_ms"), strict=True)
        ]
        low, high, ratios["interval_coverage"] = median_interval(per_round)
        ratios[f"{mode}_interval"] = [low, high]
    return ratios


def bench_shape(
    shape: Shape,
    repeats: int = 7,
    warmup: int = 2,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hf: bool = True,
    compiled: bool = False,
) -> dict:
    device = torch.device(device)
    torch.manual_seed(0)
    arms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "moe": _moe_layer(shape, "auto"),
        "moe-loop": _moe_layer(shape, "loop"),
        "dense": _DenseSwiGLU(shape.input_dim, active_width(shape), shape.output_dim),
    }
    if hf:
        arms.update(_hf_blocks(shape))
    for m in arms.values():
        m.to(device, dtype)
    if compiled:  # the same modules (same weights), compiled
        arms["moe-compiled"] = torch.compile(arms["moe"])
        arms["dense-compiled"] = torch.compile(arms["dense"])
    inputs = round_inputs(shape, warmup + repeats, dtype, device)
    x = inputs[0]

    def run(name: str, module: nn.Module) -> torch.Tensor:
        if name.startswith("hf-"):
            return module(x.unsqueeze(0))
        out = module(x)
        return out.out if hasattr(out, "out") else out

    def forward(name: str, module: nn.Module) -> None:
        with torch.no_grad():
            run(name, module)

    def forward_backward(name: str, module: nn.Module) -> None:
        module.zero_grad(set_to_none=True)
        run(name, module).float().pow(2).mean().backward()

    compile_error = ""
    if (
        compiled
    ):  # compile outside the timed rounds; where it breaks (no C++ compiler, an unsupported build) the
        # compiled arms are dropped and the reason reported
        try:
            for name in ("moe-compiled", "dense-compiled"):
                forward_backward(name, arms[name])
        except (
            Exception
        ) as err:  # dynamo/inductor raise many types; all mean "this arm does not compile here"
            compile_error = (
                f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
            )
            del arms["moe-compiled"], arms["dense-compiled"]
    results = {n: ArmResult(0.0, 0.0) for n in arms}
    for i in range(warmup + repeats):
        x = inputs[i]  # a new input each round, the same for every arm of it
        for name, module in arms.items():  # interleaved: every round times every arm once
            f = _time(lambda: forward(name, module), device)  # noqa: B023
            fb = _time(lambda: forward_backward(name, module), device)  # noqa: B023
            if i >= warmup:
                results[name].forward_all_ms.append(f)
                results[name].forward_backward_all_ms.append(fb)
        gc.collect()
    for r in results.values():
        r.forward_ms = statistics.median(r.forward_all_ms)
        r.forward_backward_ms = statistics.median(r.forward_backward_all_ms)
    hf_arms = {n: r for n, r in results.items() if n.startswith("hf-")}
    tflops = {
        n: {
            mode: arm_flops(shape, n)[mode] / (getattr(r, f"{mode}_ms") / 1000) / 1e12
            for mode in ("forward", "forward_backward")
        }
        for n, r in results.items()
    }
    out = {
        "shape": asdict(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device.type,
        "arms": {n: {**asdict(r), "tflops": tflops[n]} for n, r in results.items()},
        "moe_over_dense": ratios_with_intervals(results["moe"], results["dense"], results["dense"]),
        "moe_tflops_share_of_dense": {
            mode: tflops["moe"][mode] / tflops["dense"][mode] for mode in ("forward", "forward_backward")
        },
    }
    if compile_error:
        out["compile_error"] = compile_error
    elif compiled:
        out["compiled_moe_over_compiled_dense"] = {
            mode: getattr(results["moe-compiled"], f"{mode}_ms")
            / getattr(results["dense-compiled"], f"{mode}_ms")
            for mode in ("forward", "forward_backward")
        }
    hf = hf_arms
    if hf:
        best_f = min(hf, key=lambda n: hf[n].forward_ms)
        best_fb = min(hf, key=lambda n: hf[n].forward_backward_ms)
        out["moe_over_hf_best"] = {
            **ratios_with_intervals(results["moe"], hf[best_f], hf[best_fb]),
            "hf_best_forward": best_f,
            "hf_best_forward_backward": best_fb,
        }
    return out


def run_benchmark(
    shapes: list[str] | None = None,
    repeats: int = 7,
    dtype: str = "auto",
    device: str = "cpu",
    hf: bool = True,
    compiled: bool = False,
) -> dict:
    """``dtype`` ``auto`` is bfloat16 where this machine runs bf16 natively (:func:`audiomoe.runtime.bf16_native`;
    always on CUDA), else float32: an emulated bf16 would time the emulation, not the adapter."""
    chosen = [s for s in SHAPES if shapes is None or s.name in shapes]
    if not chosen:
        raise ValueError(f"no such shape; choose from {[s.name for s in SHAPES]}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: no CUDA GPU is visible to torch here (torch.cuda.is_available() is False)"
        )
    if dtype == "auto":
        dtype = "bfloat16" if runtime.resolve_precision("auto", device) == "bf16" else "float32"
    capability, _ = runtime.cpu_bf16_flags()
    kernels.reset_auto_choices()
    results = {
        s.name: bench_shape(
            s, repeats=repeats, dtype=getattr(torch, dtype), device=device, hf=hf, compiled=compiled
        )
        for s in chosen
    }
    return {
        "torch": torch.__version__,
        "machine": machine(torch.device(device)),
        "cpu_model": runtime.cpu_model(),
        "cpu_capability": capability,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "huge_pages": huge_pages_on(),  # torch's huge-page CPU allocation (audiomoe.allocator)
        "repeats": repeats,
        "shapes": results,
        # what kernel: auto chose for each shape class it met (the moe arm), with the probe's times
        "auto_kernel_choices": kernels.auto_choices_as_dicts(),
    }


def _ratio_cell(ratios: dict, mode: str) -> str:
    interval = ratios.get(f"{mode}_interval")
    text = f"{ratios[mode]:.2f}"
    return f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else text


def format_table(result: dict) -> str:
    lines = [f"machine: {result['machine']}, {result.get('dtype', '')}"] if "machine" in result else []
    lines += [
        "| shape | arm | forward ms | fwd+bwd ms | TFLOP/s fwd | fwd+bwd |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in result["shapes"].items():
        for arm, a in r["arms"].items():
            t = a.get("tflops", {})
            lines.append(
                f"| {name} | {arm} | {a['forward_ms']:.1f} | {a['forward_backward_ms']:.1f} | "
                f"{t.get('forward', float('nan')):.3f} | {t.get('forward_backward', float('nan')):.3f} |"
            )
    coverage = next(iter(result["shapes"].values()))["moe_over_dense"].get("interval_coverage")
    lines += [
        "",
        "ratios of the medians; in brackets the range of the per-round ratio"
        + (f" ({coverage:.1%} interval for its median)" if coverage is not None else ""),
        "| shape | moe_over_dense fwd | fwd+bwd | moe_over_hf_best fwd | fwd+bwd |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["shapes"].items():
        d = r["moe_over_dense"]
        h = r.get("moe_over_hf_best")
        hf = (
            f"{_ratio_cell(h, 'forward')} ({h['hf_best_forward']}) | "
            f"{_ratio_cell(h, 'forward_backward')} ({h['hf_best_forward_backward']})"
            if h
            else "n/a (not square) | n/a"
        )
        lines.append(
            f"| {name} | {_ratio_cell(d, 'forward')} | {_ratio_cell(d, 'forward_backward')} | {hf} |"
        )
    if any("compiled_moe_over_compiled_dense" in r for r in result["shapes"].values()):
        lines += ["", "| shape | compiled moe / compiled dense fwd | fwd+bwd |", "|---|---:|---:|"]
        for name, r in result["shapes"].items():
            c = r.get("compiled_moe_over_compiled_dense")
            if c:
                lines.append(f"| {name} | {c['forward']:.2f} | {c['forward_backward']:.2f} |")
    lines += ["", "| shape | MoE TFLOP/s as a share of dense fwd | fwd+bwd |", "|---|---:|---:|"]
    for name, r in result["shapes"].items():
        share = r.get("moe_tflops_share_of_dense")
        if share:
            lines.append(f"| {name} | {share['forward']:.0%} | {share['forward_backward']:.0%} |")
    for choice in result.get("auto_kernel_choices", []):
        lines.append(kernels.AutoChoice(**choice).describe())
    return "\n".join(lines)
