"""Adapter conversions that start function-preserving: dense -> MoE upcycling, per-block MoE -> MoUE-style.

- :func:`dense_to_moe`: an ``mlp`` adapter becomes an ``moe`` adapter whose routed experts are all copies of the
  dense feed-forward (sparse upcycling, Komatsuzaki et al. 2023). With renormalised top-k weights summing to 1,
  ``Σ_k w_k·f(x) = f(x)``, whatever the router says, so the start is exact; the symmetry between experts is broken
  by the router's small random init (different experts receive different tokens, hence different gradients).
  ``expert_noise > 0`` additionally perturbs each copy (then the start is only approximately the dense model).
- :func:`widen_moue`: a per-block ``moue`` adapter (stride = window, the plain per-block MoE) gets wider windows
  over the same pool, so each block can reach its neighbours' experts; the new reach starts behind a logit bias
  of ``-bias`` (``window_bias``) that keeps every token's top-k choice and weights unchanged, and anneals to 0 over
  ``widen_steps`` training forwards ("progressive conversion", our reading of MoUE's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from audiomoe.adapters.base import Adapter, adapter_config_from_dict, build_adapter
from audiomoe.adapters.dense import MLPAdapter
from audiomoe.adapters.moe import MoEAdapter
from audiomoe.adapters.moue import MoUEAdapter
from audiomoe.config import ConfigError, to_dict


def dense_to_moe(
    dense: Adapter,
    num_experts: int = 4,
    top_k: int = 2,
    router_std: float = 0.02,
    expert_noise: float = 0.0,
    **fields: Any,
) -> MoEAdapter:
    """An ``moe`` adapter equal to ``dense`` (an ``mlp`` adapter) at step 0; ``fields`` go to its config."""
    if not isinstance(dense, MLPAdapter):
        raise ConfigError(f"upcycling to moe needs an 'mlp' adapter, the source is {dense.config.type!r}")
    c = dense.config
    config = adapter_config_from_dict({
        "type": "moe", "input_dim": c.input_dim, "output_dim": c.output_dim, "downsample": c.downsample,
        "downsample_factor": c.downsample_factor, "fuse_dim": c.fuse_dim, "expert_type": c.mlp_type,
        "expert_hidden_dim": c.hidden_dim, "num_shared_experts": 0, "num_experts": num_experts, "top_k": top_k,
        "router": "softmax", "norm_topk_prob": True, "pre_norm": c.pre_norm and c.mlp_type == "swiglu",
        "output_norm": c.post_norm, **fields,
    })  # fmt: skip
    moe = build_adapter(config)
    param = next(dense.parameters())
    moe.to(dtype=param.dtype, device=param.device)
    with torch.no_grad():
        moe.front.load_state_dict(dense.front.state_dict())
        moe.norm_in.load_state_dict(dense.norm_in.state_dict())
        moe.norm_out.load_state_dict(dense.norm_out.state_dict())
        mlp, experts = dense.mlp, moe.moe.experts
        if c.mlp_type == "swiglu":
            source = {"gate_up_proj": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                      "down_proj": mlp.down_proj.weight}  # fmt: skip
        else:
            source = {"norm_weight": mlp.norm.weight, "norm_bias": mlp.norm.bias, "up_proj": mlp.up_proj.weight,
                      "up_bias": mlp.up_proj.bias, "down_proj": mlp.down_proj.weight,
                      "down_bias": mlp.down_proj.bias}  # fmt: skip
        for name, tensor in source.items():
            target = getattr(experts, name)
            target.copy_(tensor.expand_as(target))
            if expert_noise and not name.startswith("norm_"):
                target.add_(expert_noise * tensor.abs().mean() * torch.randn_like(target))
        moe.moe.gate.weight.normal_(0.0, router_std)
    return moe


def widen_moue(source: Adapter, window: int, widen_steps: int = 0, bias: float = 1e4) -> MoUEAdapter:
    """The same pool and blocks with windows of ``window`` experts; equal to ``source`` at step 0."""
    if not isinstance(source, MoUEAdapter):
        raise ConfigError(f"converting to moue needs a 'moue' adapter, the source is {source.config.type!r}")
    c = source.config
    if c.stride != c.window:
        raise ConfigError(
            f"progressive conversion starts from a per-block moue (stride = window); the source has stride "
            f"{c.stride}, window {c.window}"
        )
    if not c.window <= window <= c.pool_size:
        raise ConfigError(f"--window must be in [{c.window}, pool_size={c.pool_size}], got {window}")
    config = dataclasses.replace(c, window=window, widen_steps=widen_steps)
    config = adapter_config_from_dict(to_dict(config))  # validated
    wide = build_adapter(config)
    param = next(source.parameters())
    wide.to(dtype=param.dtype, device=param.device)
    state = {k: v for k, v in source.state_dict().items() if k not in ("window_bias", "forwards_seen")}
    wide.load_state_dict(state, strict=False)
    with torch.no_grad():
        # experts a block could not reach before sit behind -bias: its top-k set and weights stay the same
        new_reach = wide.windows & ~source.windows
        wide.window_bias.copy_(torch.where(new_reach, -bias, 0.0))
    return wide


CONVERSIONS = {"moe": dense_to_moe, "moue": widen_moue}


def convert_adapter(source: Adapter, to: str, **options: Any) -> Adapter:
    """``to`` = ``moe`` (dense upcycling) or ``moue`` (progressive widening); ``options`` as the functions take."""
    if to not in CONVERSIONS:
        raise ConfigError(f"--to {to!r} is unknown; choose one of {sorted(CONVERSIONS)}")
    return CONVERSIONS[to](source, **options)
