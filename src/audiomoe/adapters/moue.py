"""MoUE-style adapter: a stack of MoE blocks over one universal expert pool reused across depth.

"MoUE-style", not MoUE: the MoUE paper (arXiv 2603.04971) gives only the names of its parts in the abstract
(staggered rotational topology, universal expert load balance, universal router, progressive conversion). The
forms below are this toolkit's reading of those names (../shared/SIBLINGS.md §B.7), documented in
docs/siblings.md:

- **pool**: M experts (:class:`~audiomoe.adapters.moe.GroupedExperts`, width D -> I -> D) shared by L residual
  blocks ``x <- x + MoE_l(LN_l(x) + d_l)`` with a learnable per-block depth embedding ``d_l`` (MoRE's, stated there);
- **staggered rotational topology**: block l routes only within the window ``{(l·s + j) mod M : j < W}``;
  ``s = W, M = L·W`` is a plain per-block MoE, ``W = M`` a fully shared pool;
- **universal router** (optional): one router matrix for every block plus a GRU trajectory state carried from
  block to block per token, whose projection is added to the logits;
- **balance**: ``per_layer`` (Switch loss inside each window, averaged), ``pool`` (one Switch loss on the pool's
  summed load) or ``pool_exposure`` (target load of expert e proportional to its exposure n_e, the number of
  windows holding it);
- **progressive conversion**: ``window_bias`` (buffer ``(L, M)``) holds a large negative bias on the experts a
  converted block could not reach before; :mod:`audiomoe.adapters.convert` sets it, and it anneals to 0 over
  ``widen_steps`` training forwards.

Routing and dispatch are the moe module's (:func:`~audiomoe.adapters.moe.dispatch_to_experts`); padded frames
never reach a router, so every statistic counts valid frames only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from audiomoe.adapters.base import Adapter, AdapterConfig, AdapterOutput, register_adapter
from audiomoe.adapters.front import DownsampleFront
from audiomoe.adapters.moe import GroupedExperts, RoutingResult, dispatch_to_experts
from audiomoe.config import ConfigError

BalanceKind = Literal["per_layer", "pool", "pool_exposure"]


@dataclass
class MoUEAdapterConfig(AdapterConfig):
    """Widths: front -> H, ``Linear(H -> D)`` (D = output_dim), L blocks at width D, each routing ``top_k`` of its
    ``window`` experts (pool of ``pool_size``, expert D -> ``expert_hidden_dim`` -> D), then LayerNorm."""

    type: str = "moue"
    num_blocks: int = 2  # L
    pool_size: int = 8  # M
    window: int = 4  # W
    stride: int = 4  # s; s = W with M = L*W is a per-block MoE, W = M a fully shared pool
    top_k: int = 2
    expert_type: Literal["swiglu", "ffn"] = "swiglu"
    expert_hidden_dim: int = 1024
    depth_embedding: bool = True
    universal_router: bool = False
    router_state_dim: int = 32
    balance: BalanceKind = "per_layer"
    load_balance_coef: float = 0.01
    widen_steps: int = 0  # progressive conversion: training forwards over which window_bias anneals to 0
    kernel: Literal["auto", "loop", "grouped_mm", "grouped_mm_padded"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_blocks < 2:
            raise ConfigError(
                f"adapter.num_blocks must be >= 2 (a pool reused across depth), got {self.num_blocks}"
            )
        if not 1 <= self.window <= self.pool_size:
            raise ConfigError(f"adapter.window must be in [1, pool_size={self.pool_size}], got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ConfigError(f"adapter.stride must be in [1, window={self.window}], got {self.stride}")
        if not 1 <= self.top_k <= self.window:
            raise ConfigError(f"adapter.top_k must be in [1, window={self.window}], got {self.top_k}")
        for name in ("expert_hidden_dim", "router_state_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"adapter.{name} must be >= 1, got {getattr(self, name)}")
        if self.load_balance_coef < 0 or self.widen_steps < 0:
            raise ConfigError("adapter.load_balance_coef and adapter.widen_steps must be >= 0")


def window_mask(num_blocks: int, pool_size: int, window: int, stride: int) -> torch.Tensor:
    """``(L, M)`` bool: block l may route to expert e iff ``e in {(l·s + j) mod M : j < W}``."""
    mask = torch.zeros(num_blocks, pool_size, dtype=torch.bool)
    for block in range(num_blocks):
        mask[block, [(block * stride + j) % pool_size for j in range(window)]] = True
    return mask


def switch_loss(frac: torch.Tensor, prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``Σ_e frac_e · prob_e / target_e`` over experts with target > 0; 1.0 when frac = prob = target."""
    keep = target > 0
    return (frac[keep] * prob[keep] / target[keep]).sum()


@register_adapter("moue", MoUEAdapterConfig)
class MoUEAdapter(Adapter):
    """front -> Linear -> L blocks over one expert pool (windowed top-k routing) -> LayerNorm -> ``(B, T', D)``."""

    config: MoUEAdapterConfig

    def __init__(self, config: MoUEAdapterConfig) -> None:
        super().__init__(config)
        c = config
        d, m, nb = c.output_dim, c.pool_size, c.num_blocks
        self.front = DownsampleFront(c.downsample, c.downsample_factor, c.input_dim)
        self.proj_in = nn.Linear(self.front.output_dim, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(nb))
        self.depth = nn.Parameter(torch.zeros(nb, d)) if c.depth_embedding else None
        self.experts = GroupedExperts(c.expert_type, m, d, c.expert_hidden_dim, d)
        # one router matrix per block (rows outside its window are never used), or one shared by all blocks
        self.router = nn.Parameter(torch.empty(1 if c.universal_router else nb, m, d))
        nn.init.uniform_(self.router, -1 / math.sqrt(d), 1 / math.sqrt(d))
        if c.universal_router:
            self.state_cell = nn.GRUCell(m + d, c.router_state_dim)
            self.state_to_logits = nn.Linear(c.router_state_dim, m, bias=False)
            nn.init.zeros_(self.state_to_logits.weight)  # starts as plain shared routing
        self.norm_out = nn.LayerNorm(d)
        self.register_buffer("windows", window_mask(nb, m, c.window, c.stride), persistent=False)
        # progressive conversion: bias on logits (0 = plain windows), annealed to 0 over widen_steps forwards
        self.register_buffer("window_bias", torch.zeros(nb, m))
        self.register_buffer("forwards_seen", torch.zeros((), dtype=torch.long))

    # -- routing ------------------------------------------------------------------------------------------------

    def exposure(self) -> torch.Tensor:
        """``(M,)`` n_e: how many blocks' windows hold expert e."""
        return self.windows.sum(0)

    def _bias_scale(self) -> float:
        steps = self.config.widen_steps
        return 1.0 if steps == 0 else max(0.0, 1.0 - int(self.forwards_seen) / steps)

    def route(self, x: torch.Tensor, block: int, state: torch.Tensor | None) -> RoutingResult:
        """Top-k within block ``block``'s window: x ``(N, D)`` -> indices/weights ``(N, K)``, probs ``(N, M)``
        (0 outside the window). Softmax over the window, renormalised over the chosen k (the moe default)."""
        c = self.config
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.router[0 if c.universal_router else block]
            logits = F.linear(x.float(), weight.float()) + self.window_bias[block] * self._bias_scale()
            if state is not None:
                logits = logits + self.state_to_logits(state.float())
            logits = logits.masked_fill(~self.windows[block], float("-inf"))
            probs = torch.softmax(logits, dim=-1)
        weights, indices = torch.topk(probs, c.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-20)
        return RoutingResult(indices=indices, weights=weights, logits=logits, probs=probs)

    def blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[RoutingResult], list[torch.Tensor]]:
        """The residual stack over valid tokens x ``(N, D)`` -> ``(N, D)``, each block's routing and counts."""
        c = self.config
        state = (
            x.new_zeros(x.shape[0], c.router_state_dim, dtype=torch.float32) if c.universal_router else None
        )
        routings, counts = [], []
        for block in range(c.num_blocks):
            h = self.norms[block](x)
            if self.depth is not None:
                h = h + self.depth[block]
            routing = self.route(h, block, state)
            out, count = dispatch_to_experts(self.experts, h, routing, c.kernel)
            x = x + out.to(x.dtype)
            if state is not None:
                state = self.state_cell(torch.cat([routing.probs, h.float()], -1), state)
            routings.append(routing)
            counts.append(count)
        return x, routings, counts

    def balance_loss(self, routings: list[RoutingResult]) -> torch.Tensor:
        """The configured balance loss (1.0 at its target), from valid tokens only."""
        c = self.config
        m = c.pool_size
        if not routings or routings[0].indices.shape[0] == 0:
            return self.router.new_zeros(())
        fracs = [
            torch.bincount(r.indices.reshape(-1), minlength=m).float() / r.indices.numel() for r in routings
        ]
        probs = [r.probs.mean(0) for r in routings]
        if c.balance == "per_layer":
            # each window balanced on its own: the Switch loss over the W experts it can reach
            target = torch.full((m,), 1.0 / c.window, device=fracs[0].device)
            losses = [switch_loss(f, p, target * w) for f, p, w in zip(fracs, probs, self.windows.float())]
            return torch.stack(losses).mean()
        frac, prob = torch.stack(fracs).mean(0), torch.stack(probs).mean(0)
        exposure = self.exposure().float()
        target = exposure / exposure.sum() if c.balance == "pool_exposure" else (exposure > 0).float()
        if c.balance == "pool":
            target = target / target.sum()
        return switch_loss(frac, prob, target)

    # -- adapter contract ---------------------------------------------------------------------------------------

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        c = self.config
        x, out_mask = self.front(features, self.validate_input(features, mask))
        b, t, _ = x.shape
        y, routings, counts = self.blocks(self.proj_in(x[out_mask]))  # valid tokens only
        y = self.norm_out(y)
        if self.training and c.widen_steps:
            self.forwards_seen += 1
        embeds = y.new_zeros(b, t, y.shape[-1])
        embeds[out_mask] = y
        # analysis fields: the last block's routing (what a single-layer analysis reads), load over all blocks
        last = routings[-1]
        logits = last.logits.new_zeros(b, t, c.pool_size)
        logits[out_mask] = last.logits.masked_fill(last.logits.isinf(), 0.0)
        indices = last.indices.new_full((b, t, c.top_k), -1)
        indices[out_mask] = last.indices
        weights = last.weights.new_zeros(b, t, c.top_k)
        weights[out_mask] = last.weights
        balance = self.balance_loss(routings)
        return AdapterOutput(
            embeds=embeds,
            mask=out_mask,
            aux_loss=c.load_balance_coef * balance,
            aux_losses={"load_balance": balance},
            router_logits=logits,
            expert_indices=indices,
            expert_weights=weights,
            tokens_per_expert=torch.stack(counts).sum(0),
        )

    def active_parameters(self) -> int:
        """All parameters except unchosen experts: per block a token runs k experts, so the pool counts
        ``L·k / M`` of its parameters (capped at 1 when L·k > M: a shared expert is still the same weights)."""
        c = self.config
        total = sum(p.numel() for p in self.parameters())
        pool = sum(p.numel() for p in self.experts.parameters())
        used = min(c.pool_size, c.num_blocks * c.top_k)
        return total - pool + pool * used // c.pool_size

    def routing_summary(self) -> dict[str, int]:
        """Pool size M, virtual width L·W (expert slots a token can reach across depth) and the number of
        distinct routing paths per token, ``C(W, k)^L``."""
        c = self.config
        return {
            "pool_size": c.pool_size,
            "virtual_width": c.num_blocks * c.window,
            "routing_paths": math.comb(c.window, c.top_k) ** c.num_blocks,
        }


def moue_preset(
    kind: Literal["per_block", "staggered", "shared"], num_blocks: int = 2, experts_per_block: int = 4
) -> dict:
    """Topologies over the same pool ``M = L·E_b`` and stride ``s = E_b`` (so equal total and active parameters
    with the same ``top_k`` and expert width): ``per_block`` (``W = E_b``: disjoint windows, a plain per-block MoE),
    ``staggered`` (``W = 2·E_b``, capped at M: each window overlaps its neighbours' by half, every expert is
    reachable from two blocks) and ``shared`` (``W = M``: every block sees the whole pool)."""
    pool = num_blocks * experts_per_block
    window = {"per_block": experts_per_block, "staggered": min(pool, 2 * experts_per_block), "shared": pool}[
        kind
    ]
    return {"type": "moue", "num_blocks": num_blocks, "pool_size": pool, "window": window,
            "stride": experts_per_block}  # fmt: skip
