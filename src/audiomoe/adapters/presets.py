"""Named adapter configurations and the fair-comparison helper.

``paper-2601.02967`` is the MoE-Adapter as the paper's reported budget implies (see ../shared/PAPER.md): input
2560 (four 1280-d Whisper-large-v3 frames already fused to 2560), output 2048 (Qwen3-1.7B); 8 routed ``ffn``
experts 2560 -> 1280 -> 2048, router Linear(2560 -> 8), top-4 renormalised softmax, Switch balance loss; one
always-on shared FFN 2560 -> 10240 -> 2048 on the same input; LayerNorm on the sum: 94.4M total, 70.8M active.
``paper-2601.02967-dense`` is its dense twin, one FFN 2560 -> 20480 -> 2048 (94.4M).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from audiomoe.adapters.base import AdapterConfig, adapter_config_from_dict, build_adapter
from audiomoe.adapters.moe import MoEAdapterConfig
from audiomoe.config import ConfigError, to_dict

PRESETS: dict[str, dict[str, Any]] = {
    "paper-2601.02967": {
        "type": "moe",
        "input_dim": 2560,
        "output_dim": 2048,
        "downsample": "none",
        "downsample_factor": 1,
        "num_experts": 8,
        "top_k": 4,
        "expert_type": "ffn",
        "expert_hidden_dim": 1280,
        "num_shared_experts": 1,
        "shared_hidden_dim": 10240,
        "router": "softmax",
        "norm_topk_prob": True,
        "load_balance_coef": 0.01,
        "output_norm": True,
    },
    "paper-2601.02967-dense": {
        "type": "mlp",
        "input_dim": 2560,
        "output_dim": 2048,
        "downsample": "none",
        "downsample_factor": 1,
        "mlp_type": "ffn",
        "hidden_dim": 20480,
        "post_norm": True,
    },
}


def preset_config(name: str, **overrides: Any) -> AdapterConfig:
    if name not in PRESETS:
        raise ConfigError(f"adapter preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
    return adapter_config_from_dict({**PRESETS[name], **overrides})


def count_parameters(config: AdapterConfig | dict[str, Any]) -> dict[str, int]:
    """Total and active parameters of an adapter, counted on the meta device (no memory, any size)."""
    with torch.device("meta"):
        adapter = build_adapter(config)
    counts = adapter.param_counts()
    return {"total_params": counts.total, "active_params": counts.active}


def routing_summary(config: AdapterConfig | dict[str, Any]) -> dict[str, int]:
    """An adapter's ``routing_summary()`` (pool size, virtual width, routing paths) where it has one, else {}."""
    with torch.device("meta"):
        adapter = build_adapter(config)
    summary = getattr(adapter, "routing_summary", None)
    return summary() if summary is not None else {}


def matched_moe_config(
    dense_config: AdapterConfig | dict[str, Any],
    num_experts: int = 8,
    top_k: int = 2,
    num_shared: int = 1,
    tolerance: float = 0.02,
    **moe_overrides: Any,
) -> MoEAdapterConfig:
    """An MoE-Adapter whose *active* parameters per token match ``dense_config``'s within ``tolerance``.

    Same front (input/output widths, downsampling); routed and shared experts share one width I, solved from the
    fact that active parameters are affine in I.
    """
    dense = adapter_config_from_dict(dense_config) if isinstance(dense_config, dict) else dense_config
    target = count_parameters(dense)["active_params"]
    base = {
        "type": "moe",
        "input_dim": dense.input_dim,
        "output_dim": dense.output_dim,
        "downsample": dense.downsample if dense.downsample != "conv" else "stack",
        "downsample_factor": dense.downsample_factor,
        "num_experts": num_experts,
        "top_k": top_k,
        "num_shared_experts": num_shared,
        **moe_overrides,
    }

    def active(width: int) -> int:
        return count_parameters({**base, "expert_hidden_dim": width, "shared_hidden_dim": None})[
            "active_params"
        ]

    a1, a2 = active(1), active(2)
    slope = a2 - a1
    width = max(1, round((target - a1) / slope) + 1)
    config = adapter_config_from_dict({**base, "expert_hidden_dim": width})
    got = count_parameters(config)["active_params"]
    if abs(got - target) > tolerance * target:
        raise ConfigError(
            f"cannot match {target} active parameters within {tolerance:.0%} (closest {got}); the dense adapter is "
            "smaller than the MoE's fixed parts (router, front, norms): use fewer experts or a bigger dense arm"
        )
    return dataclasses.replace(config)  # a fresh, validated config


def describe(config: AdapterConfig) -> dict[str, Any]:
    """Config plus parameter counts, for reports."""
    return {**to_dict(config), **count_parameters(config)}
