"""``audiomoe bench step``: one LALM training step broken into phases, and how the step grows.

Phases, timed with ``time.perf_counter`` around each (CUDA synchronised before every reading), medians of
``steps`` steps after one warm-up: ``data`` (building the batch tensors: synthetic random clips and tokens, so it
is the collate / transfer cost, not audio decoding), ``encoder`` (a frozen encoder runs without autograd; a feature cache would
replace it by a read), ``adapter`` (adapter
+ writing its tokens into the LLM's input embeddings), ``llm_forward`` (LLM forward and loss), ``backward`` and
``optimizer`` (AdamW step + zero_grad, built as training builds it: ``optim.implementation=auto``). Shares are
each phase's median over the sum of medians.

Loss A/B: LLM forward + backward with the logits at the supervised positions only (what training does) against
all ``(B, L, V)`` logits (transformers' default), interleaved, medians over rounds.

Optimizer A/B: the AdamW step over the breakdown model's trainable parameters under each implementation (torch's
for-loop, foreach and fused kernels), interleaved round-robin with the same gradients, medians, and each one's time
over the for-loop's.

Scaling curves (total step time, medians): clip length, batch size, number of experts at fixed top-k (fixed
active parameters per token), top-k; written as PNG plots with matplotlib.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from audiomoe.benchmarks.activation_memory import synthetic_batch
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.config import OptimSection, TrainConfig
from audiomoe.training.trainer import build_optimizer, optimizer_implementation

PHASES = ("data", "encoder", "adapter", "llm_forward", "backward", "optimizer")
OPTIMIZER_IMPLEMENTATIONS = ("for_loop", "foreach", "fused")


def _optimizer(model: torch.nn.Module, implementation: str = "auto") -> torch.optim.AdamW:
    return build_optimizer(model, TrainConfig(optim=OptimSection(lr=1e-4, implementation=implementation)))


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: CUDA work is asynchronous."""
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def _model(preset: str, adapter: dict[str, Any]) -> AudioLanguageModel:
    return AudioLanguageModel(build_preset(preset, "moe", adapter=adapter)).float()


def time_step(
    model: AudioLanguageModel,
    batch_size: int,
    seconds: float,
    steps: int,
    supervised_logits_only: bool = True,
) -> dict[str, float]:
    """Median seconds per phase over ``steps`` training steps (after one warm-up step), the LLM's loss computed
    as training computes it (``supervised_logits_only``: logits at the supervised positions only)."""
    device = next(model.parameters()).device
    sync = _synchronizer(device)
    optimizer = _optimizer(model)
    model.train()
    samples: dict[str, list[float]] = {name: [] for name in PHASES}
    marks: list[float] = []

    def mark() -> None:
        sync()
        marks.append(time.perf_counter())

    for step in range(steps + 1):
        marks.clear()
        mark()

        batch = {
            k: v.to(device)
            for k, v in synthetic_batch(model, batch_size, int(seconds * 100), seed=step).items()
        }
        mark()
        hidden, mask = model.encode_audio(batch["audio_features"], batch["audio_lengths"])
        mark()
        embeds, _ = model._input_embeds(batch["input_ids"], None, None, hidden, mask)
        mark()
        _, loss = model.language_model_loss(
            embeds, batch["attention_mask"], batch["labels"], supervised_logits_only
        )
        mark()
        loss.backward()
        mark()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark()
        if step:  # the first step warms allocator and kernels
            for name, start, end in zip(PHASES, marks[:-1], marks[1:], strict=True):
                samples[name].append(end - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def time_optimizers(model: torch.nn.Module, rounds: int = 7) -> dict[str, Any]:
    """Median seconds of one AdamW step over ``model``'s trainable parameters per implementation (interleaved
    round-robin, one warm-up round; every arm steps its own copy of the parameters with the same gradients)."""
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=params[0].device).manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) * 1e-3 for p in params]
    arms = {}
    for name in OPTIMIZER_IMPLEMENTATIONS:
        copy = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in params])
        arms[name] = (list(copy), _optimizer(copy, name))
    sync = _synchronizer(params[0].device)
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(rounds + 1):
        for name, (copy, optimizer) in arms.items():
            for p, g in zip(copy, grads, strict=True):
                p.grad = g.clone()
            sync()
            start = time.perf_counter()
            optimizer.step()
            sync()
            if round_:
                samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "params": sum(p.numel() for p in params),
        "tensors": len(params),
        "median_s": medians,
        "over_for_loop": {name: medians[name] / medians["for_loop"] for name in medians},
        "auto": optimizer_implementation(params, "auto"),
    }


def time_loss_paths(
    model: AudioLanguageModel, batch_size: int, seconds: float, steps: int, rounds: int = 2
) -> dict[str, Any]:
    """LLM forward + backward seconds (medians over ``rounds`` interleaved rounds of ``steps`` steps) with the
    logits at the supervised positions only and at all positions, and their ratio."""
    samples: dict[str, list[float]] = {"supervised": [], "all_positions": []}
    for _ in range(rounds):
        for name in samples:
            phases = time_step(model, batch_size, seconds, steps, supervised_logits_only=name == "supervised")
            samples[name].append(phases["llm_forward"] + phases["backward"])
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "llm_forward_backward_s": medians,
        "supervised_over_all": medians["supervised"] / medians["all_positions"],
    }


def run_benchmark(
    preset: str = "tiny",
    steps: int = 5,
    batch_size: int = 4,
    seconds: float = 10.0,
    clip_seconds: tuple[float, ...] = (2, 10, 30, 60),
    batches: tuple[int, ...] = (1, 4, 8),
    experts: tuple[int, ...] = (4, 8, 16),
    top_ks: tuple[int, ...] = (1, 2, 4),
) -> dict[str, Any]:
    """The breakdown at (``batch_size``, ``seconds``) and the four scaling curves (total step seconds)."""
    model = _model(preset, {})
    phases = time_step(model, batch_size, seconds, steps)
    optimizers = time_optimizers(model)
    loss_paths = time_loss_paths(model, batch_size, seconds, steps)
    total = sum(phases.values())
    curves: dict[str, list[list[float]]] = {
        "clip_seconds": [],
        "batch_size": [],
        "num_experts": [],
        "top_k": [],
    }

    def default_model_total(batch: int, clip: float) -> float:
        # the breakdown's own point is not measured again
        if (batch, clip) == (batch_size, seconds):
            return total
        return sum(time_step(model, batch, clip, steps).values())

    for s in clip_seconds:
        curves["clip_seconds"].append([s, default_model_total(batch_size, s)])
    for b in batches:
        curves["batch_size"].append([b, default_model_total(b, seconds)])
    for e in experts:
        m = _model(preset, {"num_experts": e, "top_k": min(2, e)})
        curves["num_experts"].append([e, sum(time_step(m, batch_size, seconds, steps).values())])
    for k in top_ks:
        m = _model(preset, {"num_experts": max(8, k), "top_k": k})
        curves["top_k"].append([k, sum(time_step(m, batch_size, seconds, steps).values())])
    return {
        "preset": preset,
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "batch_size": batch_size,
        "clip_seconds": seconds,
        "phases_s": phases,
        "shares": {name: value / total for name, value in phases.items()},
        "step_s": total,
        "curves": curves,
        "optimizer_ab": optimizers,
        "loss_ab": loss_paths,
    }


def write_plots(result: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per scaling curve in ``out`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, points in result["curves"].items():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([p[0] for p in points], [p[1] * 1000 for p in points], marker="o")
        ax.set_xlabel(name)
        ax.set_ylabel("step time (ms, median)")
        ax.set_title(f"{result['preset']}: step time vs {name}")
        fig.tight_layout()
        path = out / f"step_vs_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    (out / "step.json").write_text(json.dumps(result, indent=2))
    return paths


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['preset']} LALM training step, {result['device']}, {result['threads']} threads, batch "
        f"{result['batch_size']} x {result['clip_seconds']:g} s: {result['step_s'] * 1000:.1f} ms (medians of "
        f"{result['steps']})"
    ]
    for name in PHASES:
        lines.append(f"  {name:12s} {result['phases_s'][name] * 1000:8.1f} ms  {result['shares'][name]:6.1%}")
    lines.append(f"  adapter share of the step: {result['shares']['adapter']:.1%}")
    loss = result.get("loss_ab")
    if loss:
        times = loss["llm_forward_backward_s"]
        lines.append(
            f"  LLM forward + backward, logits at the supervised positions only {times['supervised'] * 1000:.1f} "
            f"ms vs at all positions {times['all_positions'] * 1000:.1f} ms (x{loss['supervised_over_all']:.2f})"
        )
    ab = result.get("optimizer_ab")
    if ab:
        arms = ", ".join(
            f"{name} {ab['median_s'][name] * 1000:.1f} ms (x{ab['over_for_loop'][name]:.2f})"
            for name in ab["median_s"]
        )
        lines.append(
            f"  AdamW step over {ab['params'] / 1e6:.2f}M parameters in {ab['tensors']} tensors: {arms}; "
            f"training's optim.implementation=auto takes {ab['auto']}"
        )
    return "\n".join(lines)
