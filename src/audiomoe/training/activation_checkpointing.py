"""Activation checkpointing of the LLM and the audio encoder (``activation_checkpointing: true`` in a train
config; ``train.activation_checkpointing=true`` is accepted as an override).

Each transformer layer's activations are dropped after the forward and recomputed in the backward: less memory
for roughly one extra forward of the checkpointed component. What the field uses, per component that trains:

- a transformers model inside it (the Qwen2 / SmolLM2 LLM, the ``WhisperEncoder`` inside our Whisper wrapper,
  LoRA-wrapped or not): ``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``,
  i.e. transformers checkpoints every decoder / encoder layer;
- any other module: its whole ``forward`` under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``.

A component with no trainable parameter runs without autograd (``AudioLanguageModel.encode_audio``), so it keeps
no activations and there is nothing to checkpoint: a frozen encoder (every shipped preset) is left alone. When
neither the LLM nor the encoder trains the option is refused with one line (it would only cost time).
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from audiomoe.config import ConfigError

COMPONENTS = ("llm", "encoder")


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _hf_model(module: nn.Module) -> Any:
    """The outermost transformers model in ``module`` that supports gradient checkpointing, or None."""
    for sub in module.modules():
        if getattr(sub, "supports_gradient_checkpointing", False) and hasattr(
            sub, "gradient_checkpointing_enable"
        ):
            return sub
    return None


def _checkpoint_forward(module: nn.Module) -> None:
    """Wrap ``module.forward`` (instance attribute) in non-reentrant ``torch.utils.checkpoint`` while training."""
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not module.training:
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    module.forward = forward  # type: ignore[method-assign]


def apply_activation_checkpointing(model: nn.Module) -> dict[str, str]:
    """Turn on activation checkpointing in ``model``'s trainable ``llm`` / ``encoder``; returns, per component,
    how (``"transformers"``, ``"torch.utils.checkpoint"``) or why not (``"frozen: nothing to checkpoint"``).
    Call before DDP / FSDP wrapping and ``torch.compile``. Raises ``ConfigError`` where it cannot apply."""
    found = {
        name: getattr(model, name) for name in COMPONENTS if isinstance(getattr(model, name, None), nn.Module)
    }
    if not found:
        raise ConfigError(
            f"activation_checkpointing: {type(model).__name__} has no `llm` or `encoder` module to checkpoint; "
            "set activation_checkpointing=false"
        )
    if not any(_trains(m) for m in found.values()):
        raise ConfigError(
            "activation_checkpointing: neither the LLM nor the encoder has a trainable parameter (both frozen), "
            "so no activation is kept to checkpoint; set activation_checkpointing=false"
        )
    how: dict[str, str] = {}
    for name, module in found.items():
        if not _trains(module):
            how[name] = "frozen: nothing to checkpoint"
            continue
        hf = _hf_model(module)
        if hf is not None:
            kwargs = {"use_reentrant": False}
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers v5's name (the old one warns)
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            how[name] = "transformers"
        else:
            _checkpoint_forward(module)
            how[name] = "torch.utils.checkpoint"
    return how
