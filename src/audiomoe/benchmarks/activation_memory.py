"""``audiomoe bench checkpointing``: memory of one tiny-LALM training step with and without activation
checkpointing (training/activation_checkpointing), encoder and LLM both trainable, fp32.

What is measured, per arm, on the same model weights and batch:

- ``saved_mb``: bytes of the tensors autograd keeps for the backward over the forward (counted with
  ``torch.autograd.graph.saved_tensors_hooks``; inside a checkpointed region checkpointing's own hooks take over,
  so those activations are not kept and not counted). This is the activation memory checkpointing exists to cut,
  exact and independent of the allocator; it is not the process's peak (weights, gradients, optimizer state and
  the recompute's transient activations come on top).
- ``peak_mb`` (CUDA only): ``torch.cuda.max_memory_allocated`` over the whole step (forward, backward, AdamW),
  the real peak of the caching allocator. On CPU there is no honest per-step peak counter (RSS is dominated by
  the allocator's arenas), so it is reported as null.
"""

from __future__ import annotations

from typing import Any

import torch

from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.activation_checkpointing import apply_activation_checkpointing


def synthetic_batch(
    model: AudioLanguageModel, batch_size: int = 2, frames: int = 200, text_tokens: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A training batch for ``model``: ``batch_size`` random clips of ``frames`` mel frames, their audio
    placeholders first, then ``text_tokens`` random answer tokens (the labels)."""
    g = torch.Generator().manual_seed(seed)
    n_audio = int(model.audio_token_lengths(torch.tensor([frames]))[0])
    ids = torch.randint(3, 200, (batch_size, n_audio + text_tokens), generator=g)
    ids[ids == model.audio_token_id] = 3
    ids[:, :n_audio] = model.audio_token_id
    width = -(-frames // model.encoder.window) * model.encoder.window  # whole encoder windows
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.where(ids == model.audio_token_id, -100, ids),
        "audio_features": torch.randn(batch_size, model.encoder.n_mels, width, generator=g),
        "audio_lengths": torch.tensor([frames] * batch_size),
    }


def saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, torch.Tensor]:
    """(bytes autograd keeps for the backward outside checkpointed regions over one forward, the loss)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    return total, loss


def _trainable_tiny() -> AudioLanguageModel:
    """The tiny MoE LALM with encoder, adapter and LLM all trainable (so both can be checkpointed), fp32."""
    config = build_preset("tiny", "moe", freeze={"encoder": False, "adapter": False, "llm": False})
    return AudioLanguageModel(config).float()


def _arm(checkpointing: bool, state: dict[str, Any], batch: dict[str, Any], device: torch.device) -> dict:
    model = _trainable_tiny()
    model.load_state_dict(state)
    how = apply_activation_checkpointing(model) if checkpointing else {}
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {k: v.to(device) for k, v in batch.items()}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved, loss = saved_bytes(model, batch)
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"checkpointing": how, "saved_mb": round(saved / 2**20, 2), "peak_mb": peak, "loss": loss.item()}


def run_benchmark(batch_size: int = 4, seconds: float = 10.0, device: str = "auto") -> dict[str, Any]:
    """Both arms on the same weights and batch (``seconds`` of audio per clip at 100 mel frames / s)."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    model = _trainable_tiny()
    batch = synthetic_batch(model, batch_size, frames=int(seconds * 100))
    state = model.state_dict()
    plain, checkpointed = _arm(False, state, batch, dev), _arm(True, state, batch, dev)
    result = {
        "device": str(dev),
        "batch_size": batch_size,
        "clip_seconds": seconds,
        "without": plain,
        "with": checkpointed,
        "saved_ratio": round(checkpointed["saved_mb"] / plain["saved_mb"], 3),
    }
    if plain["peak_mb"]:
        result["peak_ratio"] = round(checkpointed["peak_mb"] / plain["peak_mb"], 3)
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"tiny LALM step, encoder + LLM trainable, fp32, {result['device']}, batch {result['batch_size']} x "
        f"{result['clip_seconds']:g} s"
    ]
    for name in ("without", "with"):
        arm = result[name]
        peak = f", peak allocated {arm['peak_mb']:.1f} MB" if arm["peak_mb"] else ""
        lines.append(f"  {name:7s} checkpointing: kept for backward {arm['saved_mb']:.1f} MB{peak}")
    lines.append(
        f"  with/without: kept-for-backward {result['saved_ratio']:.3f}"
        + (
            f", peak {result['peak_ratio']:.3f}"
            if "peak_ratio" in result
            else " (CPU: no peak counter; see docs)"
        )
    )
    return "\n".join(lines)
