"""Convert a trained LALM's adapter and keep everything else: what ``audiomoe upcycle`` runs.

    model, report = upcycle_model("runs/dense", to="moe", num_experts=4, top_k=2)

The new model shares the source's encoder, LLM and processor; only the adapter changes
(:mod:`audiomoe.adapters.convert`). The report gives the largest difference of the adapter outputs on a random
probe batch (padding included), which a function-preserving start makes ~0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from audiomoe.adapters.convert import convert_adapter
from audiomoe.config import ConfigError, to_dict
from audiomoe.models.lalm import AudioLanguageModel, resolve_model_dir


@torch.no_grad()
def adapter_difference(a: torch.nn.Module, b: torch.nn.Module, seed: int = 0) -> float:
    """max |a(x) − b(x)| over a random probe ``(3, 24, C)`` with padded rows, both in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    param = next(a.parameters())
    x = torch.randn(3, 24, a.config.input_dim, generator=generator).to(param)
    mask = torch.arange(24)[None] < torch.tensor([24, 17, 5])[:, None]
    was = a.training, b.training
    a.eval(), b.eval()
    diff = (a(x, mask.to(x.device)).embeds - b(x, mask.to(x.device)).embeds).abs().max().item()
    a.train(was[0]), b.train(was[1])
    return diff


def upcycle_model(source: str | Path, to: str, **options: Any) -> tuple[AudioLanguageModel, dict[str, Any]]:
    """Load ``source`` (a model or run directory), convert its adapter ``to`` moe | moue (``options`` as
    :func:`~audiomoe.adapters.convert.convert_adapter` takes), return the new model and a report."""
    src = AudioLanguageModel.from_pretrained(resolve_model_dir(source))
    adapter = convert_adapter(src.adapter, to, **options)
    config = dataclasses.replace(src.config, adapter=to_dict(adapter.config))
    model = AudioLanguageModel(config, processor=src.processor)
    kept = {k: v for k, v in src.state_dict().items() if not k.startswith("adapter.")}
    missing = model.load_state_dict(kept, strict=False).missing_keys
    if any(not k.startswith("adapter.") for k in missing):
        raise ConfigError(
            f"{source}: the converted model lacks {missing[:3]}; is the source a complete model?"
        )
    model.adapter.load_state_dict(adapter.state_dict())
    counts = model.adapter.param_counts()
    report = {
        "source": str(source),
        "from": src.config.adapter["type"],
        "to": to,
        "max_abs_diff": adapter_difference(src.adapter, model.adapter),
        "adapter_total_params": counts.total,
        "adapter_active_params": counts.active,
    }
    return model, report
