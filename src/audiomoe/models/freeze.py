"""Which parameters train: per-component freeze flags, LoRA (peft) on the LLM and/or encoder, regex overrides.

Order of application (later wins), on parameter names as in ``AudioLanguageModel.named_parameters()``
(``encoder.…``, ``adapter.…``, ``llm.…``):

1. every parameter of a component trains unless ``freeze.<component>`` is true;
2. LoRA matrices (``lora_A`` / ``lora_B``, injected by peft) always train;
3. ``freeze.train_regex``: matching parameters train (``re.search``);
4. ``freeze.freeze_regex``: matching parameters are frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from audiomoe.config import ConfigError

COMPONENTS = ("encoder", "adapter", "llm")


@dataclass
class FreezeConfig:
    """Per-component freeze flags and regex overrides (see the module docstring for the order)."""

    encoder: bool = True
    adapter: bool = False
    llm: bool = True
    train_regex: list[str] = field(default_factory=list)
    freeze_regex: list[str] = field(default_factory=list)


@dataclass
class LoraSettings:
    """LoRA via peft. ``llm`` / ``encoder`` switch it on per component; target modules are module-name suffixes
    (the defaults fit Qwen2/Llama attention and Whisper attention)."""

    llm: bool = False
    encoder: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    llm_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    encoder_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"]
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")


def inject_lora(module: nn.Module, settings: LoraSettings, target_modules: list[str], where: str) -> None:
    """Add LoRA matrices to ``module`` in place (peft ``inject_adapter_in_model``); names gain ``lora_A/B``."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError(f"lora.{where} needs peft: pip install 'audiomoe[lora]'") from None
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=target_modules
    )
    try:
        inject_adapter_in_model(config, module)
    except ValueError as err:
        raise ConfigError(f"lora.{where}_target_modules {target_modules}: {err}") from None


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name


def _compile(patterns: list[str], key: str) -> list[re.Pattern[str]]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as err:
            raise ConfigError(f"freeze.{key}: {pattern!r} is not a valid regex: {err}") from None
    return out


def apply_freeze(model: nn.Module, freeze: FreezeConfig) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` (an AudioLanguageModel) per the rules above."""
    train = _compile(freeze.train_regex, "train_regex")
    frozen = _compile(freeze.freeze_regex, "freeze_regex")
    matched = dict.fromkeys(freeze.train_regex + freeze.freeze_regex, False)
    for name, param in model.named_parameters():
        component = name.split(".", 1)[0]
        trainable = not getattr(freeze, component) if component in COMPONENTS else True
        trainable = trainable or is_lora_parameter(name)
        for pattern in train:
            if pattern.search(name):
                trainable, matched[pattern.pattern] = True, True
        for pattern in frozen:
            if pattern.search(name):
                trainable, matched[pattern.pattern] = False, True
        param.requires_grad_(trainable)
    unused = [p for p, hit in matched.items() if not hit]
    if unused:
        raise ConfigError(
            f"freeze regex(es) {unused} match no parameter name; names look like 'llm.model.layers.0…'"
        )
