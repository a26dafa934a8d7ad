"""Adapters between an audio encoder and an LLM: the sparse MoE-Adapter and dense baselines.

Importing this package registers every adapter; build one with :func:`build_adapter`.
"""

from audiomoe.adapters import dense, moe, moue  # noqa: F401  (registers linear, mlp, conv, qformer, moe, moue)
from audiomoe.adapters.base import (
    ADAPTERS,
    Adapter,
    AdapterConfig,
    AdapterOutput,
    ParamCounts,
    adapter_config_from_dict,
    build_adapter,
    register_adapter,
)

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterConfig",
    "AdapterOutput",
    "ParamCounts",
    "adapter_config_from_dict",
    "build_adapter",
    "register_adapter",
]
