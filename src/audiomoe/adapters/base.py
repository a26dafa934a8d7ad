"""The adapter contract and registry.

An adapter maps encoder features ``(B, T, C)`` with a validity mask ``(B, T)`` to LLM input embeddings
``(B, T', D)`` with mask ``(B, T')``, where ``T' = output_lengths(T)``. Every adapter returns an
:class:`AdapterOutput`; dense adapters leave the routing fields empty.

New adapters are registry entries::

    @register_adapter("myadapter", MyAdapterConfig)
    class MyAdapter(Adapter): ...

    adapter = build_adapter({"type": "myadapter", "input_dim": 512, "output_dim": 896})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from audiomoe.config import ConfigError, did_you_mean, from_dict

DownsampleKind = Literal["stack", "avgpool", "conv", "none"]


@dataclass
class AdapterConfig:
    """Fields shared by every adapter. Subclasses add their own."""

    type: str = ""
    input_dim: int = 1280  # C: encoder feature width
    output_dim: int = 2048  # D: LLM hidden size
    downsample: DownsampleKind = "stack"
    downsample_factor: int = 4  # k: frames merged into one output token

    def __post_init__(self) -> None:
        for name in ("input_dim", "output_dim", "downsample_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.downsample == "none" and self.downsample_factor != 1:
            raise ConfigError("downsample='none' needs downsample_factor=1")


@dataclass
class AdapterOutput:
    """What every adapter returns.

    embeds: ``(B, T', D)`` LLM embeddings; padded positions are zero.
    mask: ``(B, T')`` bool, True on valid output tokens.
    aux_loss: scalar, already weighted by the adapter's own coefficients (0 for dense adapters).
    aux_losses: the unweighted named components of ``aux_loss`` (e.g. ``load_balance``, ``z_loss``).
    router_logits: ``(B, T', E)`` fp32 router logits (zeros at padded tokens), or None for dense adapters.
    expert_indices: ``(B, T', K)`` long, experts chosen per token, ``-1`` for padding and unused slots (top-p
        routing), values ``>= E`` for null experts (zero-compute, AdaMoE), or None for dense adapters.
    expert_weights: ``(B, T', K)`` gate weights matching ``expert_indices`` (0 where the index is -1), or None.
    tokens_per_expert: ``(E,)`` count of valid tokens routed to each real expert; empty for dense adapters.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    aux_loss: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    router_logits: torch.Tensor | None = None
    expert_indices: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None
    tokens_per_expert: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


@dataclass(frozen=True)
class ParamCounts:
    """Total parameters, and those used per output token (the MoE's active share)."""

    total: int
    active: int


class Adapter(nn.Module):
    """Base class: subclasses implement ``forward`` and may override ``active_parameters``."""

    config: AdapterConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def input_dim(self) -> int:
        return self.config.input_dim

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output tokens per sample for valid input frames ``input_lengths`` (any int shape)."""
        k = self.config.downsample_factor
        return torch.div(input_lengths + k - 1, k, rounding_mode="floor")

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        raise NotImplementedError

    def validate_input(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Check ``features (B, T, C)`` against the contract and return the bool mask ``(B, T)`` (all valid when
        ``mask`` is None), so a wrong shape fails here with the fix named rather than deep inside a matmul."""
        if features.dim() != 3:
            raise ValueError(
                f"adapter input must be (batch, frames, channels); got shape {tuple(features.shape)}"
            )
        if features.shape[-1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__} expects {self.input_dim}-dim features, got {features.shape[-1]}; "
                "set adapter.input_dim to the encoder's hidden size"
            )
        if mask is None:
            return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if mask.shape != features.shape[:2]:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match features {tuple(features.shape[:2])}"
            )
        return mask.bool()

    def active_parameters(self) -> int:
        """Parameters touched per token; equals the total for dense adapters."""
        return sum(p.numel() for p in self.parameters())

    def param_counts(self) -> ParamCounts:
        return ParamCounts(total=sum(p.numel() for p in self.parameters()), active=self.active_parameters())

    @staticmethod
    def dense_output(embeds: torch.Tensor, mask: torch.Tensor) -> AdapterOutput:
        """AdapterOutput for an adapter without routing."""
        embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
        return AdapterOutput(embeds=embeds, mask=mask, aux_loss=embeds.new_zeros((), dtype=torch.float32))


@dataclass(frozen=True)
class _Entry:
    config_cls: type[AdapterConfig]
    adapter_cls: type[Adapter]


ADAPTERS: dict[str, _Entry] = {}


def register_adapter(name: str, config_cls: type[AdapterConfig]) -> Callable[[type[Adapter]], type[Adapter]]:
    def deco(cls: type[Adapter]) -> type[Adapter]:
        if name in ADAPTERS:
            raise ValueError(f"adapter {name!r} registered twice")
        ADAPTERS[name] = _Entry(config_cls, cls)
        cls.registry_name: ClassVar[str] = name  # type: ignore[misc]
        return cls

    return deco


def adapter_config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """``{"type": "moe", ...}`` -> the typed config of that adapter (keys and values checked)."""
    kind = data.get("type")
    if kind not in ADAPTERS:
        raise ConfigError(
            f"adapter type {kind!r} is unknown{did_you_mean(str(kind), ADAPTERS)}; choose one of {sorted(ADAPTERS)}"
        )
    return from_dict(ADAPTERS[kind].config_cls, dict(data), where="adapter")


def build_adapter(config: AdapterConfig | dict[str, Any]) -> Adapter:
    """One call from a config (dataclass or dict with ``type``) to an adapter module."""
    if isinstance(config, dict):
        config = adapter_config_from_dict(config)
    if not config.type:
        config = dataclasses.replace(config, type=_name_of_config(config))
    return ADAPTERS[config.type].adapter_cls(config)


def _name_of_config(config: AdapterConfig) -> str:
    for name, entry in ADAPTERS.items():
        if type(config) is entry.config_cls:
            return name
    raise ConfigError(f"no adapter is registered for config class {type(config).__name__}")
