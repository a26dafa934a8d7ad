"""The sparse MoE-Adapter (arXiv 2601.02967): router -> top-k routed experts (+ shared experts) -> mixture.

Reading order: :class:`Router` (fp32 scores, choice of experts), :class:`GroupedExperts` (3-D expert weights,
grouped matmuls over expert-sorted rows), :class:`MoELayer` (dropless sort-based dispatch, shared expert,
balancing losses, load statistics) and :class:`MoEAdapter` (front -> MoE layer -> aggregation -> LLM width).

Padded frames never reach the router: the adapter gathers valid tokens ``(N, H)`` before routing and scatters the
result back, so losses, counts and bias updates see valid frames only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from audiomoe.adapters.base import Adapter, AdapterConfig, AdapterOutput, register_adapter
from audiomoe.adapters.front import DownsampleFront
from audiomoe.adapters.kernels import KERNELS, get_kernel, reduced_precision, silu_mul
from audiomoe.adapters.layers import build_feedforward
from audiomoe.config import ConfigError

RouterKind = Literal["softmax", "sigmoid", "top_p"]


@dataclass
class MoEAdapterConfig(AdapterConfig):
    """Configuration of the MoE-Adapter. Widths: the front gives H (``fuse_dim`` or stacked input), experts map
    H -> ``expert_hidden_dim`` -> M, where M = ``output_dim`` unless an aggregation block maps M -> output_dim."""

    type: str = "moe"
    num_experts: int = 8
    top_k: int = 2
    expert_type: Literal["swiglu", "ffn"] = "swiglu"
    expert_hidden_dim: int = 1024
    num_shared_experts: int = 1  # fused into one feed-forward of width num_shared * shared_hidden_dim
    shared_hidden_dim: int | None = None  # per shared expert; defaults to expert_hidden_dim
    shared_expert_gate: bool = False  # sigmoid(Linear(H -> 1)) gate on the shared output (Qwen2-MoE)
    router: RouterKind = "softmax"
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum to 1
    top_p: float = 0.7  # router="top_p": take experts until their cumulative probability passes p
    num_null_experts: int = 0  # AdaMoE: zero-compute experts a token may choose instead of real ones
    route_scale: float = 1.0
    bias_update_rate: float = 1e-3  # router="sigmoid": aux-loss-free bias step per optimizer step
    load_balance_coef: float = 0.01  # Switch / GShard loss
    z_loss_coef: float = 0.0  # router z-loss
    kernel: Literal["auto", "loop", "grouped_mm", "grouped_mm_padded"] = "auto"
    pre_norm: bool = False  # LayerNorm on the front's output before router and experts
    fuse_dim: int | None = None  # the paper's fusion of stacked frames (LN -> Linear -> SiLU -> LN)
    mixture_dim: int | None = None  # M when aggregation != "none"
    aggregation: Literal["none", "linear", "mlp"] = "none"  # y = W_P·mixture or MLP(mixture), then LN
    aggregation_hidden_dim: int | None = None
    output_norm: bool = False  # LayerNorm on the final sum (the paper's LN)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_experts < 1:
            raise ConfigError(f"num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts + self.num_null_experts:
            raise ConfigError(
                f"top_k={self.top_k} must be between 1 and num_experts + num_null_experts "
                f"({self.num_experts + self.num_null_experts})"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("expert_hidden_dim",):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_shared_experts < 0 or self.num_null_experts < 0:
            raise ConfigError("num_shared_experts and num_null_experts must be >= 0")
        if self.router == "sigmoid" and self.num_null_experts:
            raise ConfigError("null experts need a softmax or top_p router (sigmoid scores do not compete)")
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {sorted(KERNELS)}")
        for name in ("load_balance_coef", "z_loss_coef", "bias_update_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class RoutingResult:
    """indices ``(N, K)`` (-1 = unused slot; >= E = null expert), weights ``(N, K)``, logits ``(N, E + E0)``,
    probs ``(N, E + E0)`` the router's normalised scores used by the balance loss."""

    indices: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor


class Router(nn.Module):
    """Linear(H -> E + E0) in fp32, then one of three choice rules (softmax top-k, sigmoid + bias, top-p)."""

    def __init__(self, config: MoEAdapterConfig, hidden_dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_slots = config.num_experts + config.num_null_experts
        self.weight = nn.Parameter(torch.empty(self.num_slots, hidden_dim))
        if config.router == "sigmoid":
            # DeepSeek-V3 aux-loss-free balancing: a bias that only affects which experts are chosen
            self.register_buffer("e_score_correction_bias", torch.zeros(config.num_experts))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> RoutingResult:
        """x ``(N, H)`` valid tokens."""
        c = self.config
        # fp32 routing: bf16 logits make top-k choices and the balance loss noisy
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        if c.router == "sigmoid":
            scores = torch.sigmoid(logits)
            _, indices = torch.topk(scores + self.e_score_correction_bias, c.top_k, dim=-1)
            weights = scores.gather(-1, indices)
            probs = scores / scores.sum(-1, keepdim=True)
        elif c.router == "softmax":
            probs = torch.softmax(logits, dim=-1)
            weights, indices = torch.topk(probs, c.top_k, dim=-1)
        else:  # top_p: the smallest prefix of experts (by probability) whose mass reaches p, at most top_k
            probs = torch.softmax(logits, dim=-1)
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            sorted_p, order = sorted_p[:, : c.top_k], order[:, : c.top_k]
            mass_before = sorted_p.cumsum(-1) - sorted_p
            keep = mass_before < c.top_p  # the first expert is always kept
            weights = sorted_p * keep
            indices = torch.where(keep, order, torch.full_like(order, -1))
        if c.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-20)
        return RoutingResult(indices=indices, weights=weights * c.route_scale, logits=logits, probs=probs)


class GroupedExperts(nn.Module):
    """E experts as 3-D weights, applied to rows sorted by expert.

    ``swiglu``: ``gate_up_proj[E, 2I, H]`` (gate rows first, then up), ``down_proj[E, M, I]`` — the transformers v5
    layout. ``ffn`` (the paper's expert): per-expert LayerNorm affine ``norm_weight/norm_bias[E, H]``,
    ``up_proj[E, I, H]`` + ``up_bias[E, I]``, SiLU, ``down_proj[E, M, I]`` + ``down_bias[E, M]``.
    """

    def __init__(self, kind: str, num_experts: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.kind, self.num_experts = kind, num_experts
        e, h, i, m = num_experts, input_dim, hidden_dim, output_dim
        if kind == "swiglu":
            self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
            self.down_proj = nn.Parameter(torch.empty(e, m, i))
        elif kind == "ffn":
            self.norm_weight = nn.Parameter(torch.ones(e, h))
            self.norm_bias = nn.Parameter(torch.zeros(e, h))
            self.up_proj = nn.Parameter(torch.empty(e, i, h))
            self.up_bias = nn.Parameter(torch.empty(e, i))
            self.down_proj = nn.Parameter(torch.empty(e, m, i))
            self.down_bias = nn.Parameter(torch.empty(e, m))
        else:
            raise ConfigError(f"expert_type must be 'swiglu' or 'ffn', got {kind!r}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init per expert, so dense and MoE arms start alike."""
        for name, param in self.named_parameters():
            if name.startswith("norm_"):
                continue
            fan_in = param.shape[-1] if param.dim() == 3 else self._fan_in_of_bias(name)
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(param, -bound, bound)

    def _fan_in_of_bias(self, name: str) -> int:
        return getattr(self, name.replace("_bias", "_proj")).shape[-1]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token part of the ffn expert's LayerNorm (shared by all experts; the affine is per expert)."""
        return F.layer_norm(x, x.shape[-1:]) if self.kind == "ffn" else x

    def forward(
        self,
        x: torch.Tensor,
        counts: torch.Tensor,
        expert_ids: torch.Tensor,
        kernel: str = "auto",
        row_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x ``(S, H)`` rows sorted by expert (already ``normalize``-d), counts ``(E,)``, expert_ids ``(S,)``
        -> ``(S, M)``; with ``row_weights`` ``(S,)`` each output row is scaled by its weight, applied to the
        hidden row before the down projection (``w·down(h) = down(w·h)``: the narrower tensor)."""
        grouped_linear = get_kernel(kernel)
        if self.kind == "swiglu":
            gate, up = grouped_linear(x, self.gate_up_proj, counts).chunk(2, dim=-1)
            return grouped_linear(silu_mul(gate, up, row_weights), self.down_proj, counts)
        # fold the per-expert LayerNorm affine into the up projection: W·(γ⊙x̂ + β) + b = (W·diag γ)x̂ + (Wβ + b)
        up_weight = self.up_proj * self.norm_weight.unsqueeze(1)
        up_bias = torch.einsum("eih,eh->ei", self.up_proj, self.norm_bias) + self.up_bias
        hidden = F.silu(grouped_linear(x, up_weight, counts) + up_bias[expert_ids])
        down_bias = self.down_bias[expert_ids]
        if row_weights is not None:
            scale = row_weights.unsqueeze(-1)
            hidden, down_bias = hidden * scale.to(hidden.dtype), down_bias * scale
        return grouped_linear(hidden, self.down_proj, counts) + down_bias


def _token_rows(x: torch.Tensor, order: torch.Tensor, num_rows: int, slots: int) -> torch.Tensor:
    """x ``(N, D)`` -> ``(R, D)``: the token row of each of the first R expert-sorted slots."""
    return torch.index_select(x, 0, order[:num_rows] // slots)


def _sum_over_slots(rows: torch.Tensor, inverse: torch.Tensor, slots: int) -> torch.Tensor:
    """rows ``(R, D)`` of the first R expert-sorted slots -> ``(N, D)``: each token's K slot rows summed in slot
    order (slots past R computed nothing and count as zero rows). The transpose of :func:`_token_rows`."""
    if rows.shape[0] < inverse.numel():
        rows = F.pad(rows, (0, 0, 0, inverse.numel() - rows.shape[0]))
    slot_inverse = inverse.view(-1, slots)
    out = torch.index_select(rows, 0, slot_inverse[:, 0].contiguous())
    for slot in range(1, slots):
        out += torch.index_select(rows, 0, slot_inverse[:, slot].contiguous())
    return out


class _DispatchRows(torch.autograd.Function):
    """rows ``(R, H)`` = x[token of each expert-sorted slot], for the first R sorted slots (the computed ones).

    Gathers use ``index_select``, ~1.4x faster than advanced indexing on CPU for the same copy. The backward
    gathers each of the K slots' gradients by the inverse permutation and adds them in slot order (what a sum over
    the K axis does for small K), instead of the index_add scatter autograd would use (serial on CPU):
    measured on a 2-core Intel Xeon (AVX-512), fp32, 1024 tokens x 2048, k = 2: 8.0 -> 2.0 ms against the earlier
    zero-padded copy + gather + sum. Bit-identical to that for k <= 3; at larger k the old sum reduced in another
    order (last bits, tested)."""

    @staticmethod
    def forward(ctx, x, order, inverse, num_rows, slots):  # noqa: ANN001
        ctx.save_for_backward(inverse)
        ctx.slots = slots
        return _token_rows(x, order, num_rows, slots)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (inverse,) = ctx.saved_tensors
        return _sum_over_slots(grad, inverse, ctx.slots), None, None, None, None


class _PermuteRows(torch.autograd.Function):
    """``x[index]`` for a permutation ``index``; its backward gathers with the inverse permutation."""

    @staticmethod
    def forward(ctx, x, index, inverse_index):  # noqa: ANN001
        ctx.save_for_backward(inverse_index)
        return torch.index_select(x, 0, index)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (inverse_index,) = ctx.saved_tensors
        return torch.index_select(grad.contiguous(), 0, inverse_index), None, None


class _CombineRows(torch.autograd.Function):
    """out ``(N, M)`` = the sum of each token's K slot rows of y ``(R, M)`` (expert-sorted, the first R slots
    computed, weights already applied): the transpose of :class:`_DispatchRows`. Forward: K gathers by the
    inverse permutation, added in slot order; backward: one gather of each sorted row's token gradient."""

    @staticmethod
    def forward(ctx, y, order, inverse, slots):  # noqa: ANN001
        ctx.save_for_backward(order)
        ctx.num_rows, ctx.slots = y.shape[0], slots
        return _sum_over_slots(y, inverse, slots)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (order,) = ctx.saved_tensors
        return _token_rows(grad.contiguous(), order, ctx.num_rows, ctx.slots), None, None, None


def _combine(
    y: torch.Tensor, inverse: torch.Tensor, order: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted scatter back: y ``(R, M)`` expert-sorted outputs, weights ``(N, K)`` -> ``(N, M)``.

    Uncomputed slots are zero rows (their weight is 0 too; padded only when there are any); un-sorting is a
    permutation gather and the weighted sum over each token's K slots is one batched matmul."""
    n, k = weights.shape
    full = F.pad(y, (0, 0, 0, n * k - y.shape[0])) if y.shape[0] < n * k else y
    unsorted = _PermuteRows.apply(full, inverse, order).view(n, k, -1)
    return torch.bmm(weights.unsqueeze(1).to(unsorted.dtype), unsorted).squeeze(1)


def dispatch_to_experts(
    experts: GroupedExperts, x: torch.Tensor, routing: RoutingResult, kernel: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropless sort-based dispatch of valid tokens x ``(N, H)`` to their routed experts and the gate-weighted
    combination: -> out ``(N, M)`` and tokens per expert ``(E,)``. Slots with an index < 0 or >= E (top-p
    leftovers, null experts) are not computed. Shared by :class:`MoELayer` and the MoUE-style pool.

    Where the GEMMs run in bf16/fp16 the routing weights are folded into the experts (each sorted row's hidden
    scaled by its weight, fused into the SwiGLU) and the combine is a gather-sum, instead of the fp32 path's
    weighted ``bmm`` over the K slots, whose backward is slow in bf16 on CPU. Measured on a 2-core AMD EPYC Zen 4
    (AVX512-BF16), bf16, 2 threads, same process, interleaved medians of 15, two runs, fold / bmm fwd+bwd:
    cpu-small 0.94 / 0.92, square-2048 0.99 / 0.95, whisper-large-to-7b 0.94 / 0.95 (forward 0.94-1.02). In fp32
    the same fold read 0.95-1.03 (no gain beyond noise), so fp32 keeps the bmm and its bits."""
    num_experts = experts.num_experts
    slots = routing.indices.shape[1]
    # slots without compute (top-p leftovers, null experts) get key E and sort to the tail, unprocessed
    keys = routing.indices.reshape(-1)
    keys = torch.where((keys >= 0) & (keys < num_experts), keys, torch.full_like(keys, num_experts))
    # dropless, stable sort by expert: rows of one expert become contiguous for the grouped matmul
    sorted_keys, order = torch.sort(keys, stable=True)
    counts = torch.bincount(sorted_keys, minlength=num_experts + 1)[:num_experts]
    num_rows = int(counts.sum())
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    rows = _DispatchRows.apply(experts.normalize(x), order, inverse, num_rows, slots)
    if reduced_precision(rows):
        row_weights = torch.index_select(routing.weights.reshape(-1), 0, order[:num_rows])
        y = experts(rows, counts, sorted_keys[:num_rows], kernel, row_weights)
        return _CombineRows.apply(y, order, inverse, slots), counts
    y = experts(rows, counts, sorted_keys[:num_rows], kernel)
    return _combine(y, inverse, order, routing.weights), counts


@dataclass
class MoELayerOutput:
    """out ``(N, M)``; routing of the N valid tokens; counts ``(E,)``; unweighted losses (scalars)."""

    out: torch.Tensor
    routing: RoutingResult
    tokens_per_expert: torch.Tensor
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor


class MoELayer(nn.Module):
    """Router + routed experts + shared expert over a flat batch of tokens ``(N, H) -> (N, M)``.

    Parameter names follow transformers' ``Qwen2MoeSparseMoeBlock`` (``gate.weight``, ``experts.gate_up_proj``,
    ``experts.down_proj``, ``shared_expert.*``, ``shared_expert_gate.weight``), see :meth:`from_hf`.
    """

    def __init__(self, config: MoEAdapterConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.config = config
        self.gate = Router(config, input_dim)
        self.experts = GroupedExperts(
            config.expert_type, config.num_experts, input_dim, config.expert_hidden_dim, output_dim
        )
        shared_width = config.num_shared_experts * (config.shared_hidden_dim or config.expert_hidden_dim)
        self.shared_expert = (
            build_feedforward(config.expert_type, input_dim, shared_width, output_dim)
            if shared_width
            else None
        )
        self.shared_expert_gate = (
            nn.Linear(input_dim, 1, bias=False) if config.shared_expert_gate and self.shared_expert else None
        )
        # Valid-token load since the last router-bias update, reset by the update. A plain tensor, not a buffer:
        # DDP broadcasts buffers from rank 0 every forward, which would overwrite each rank's own count.
        self.load_since_update = torch.zeros(config.num_experts)

    def forward(self, x: torch.Tensor) -> MoELayerOutput:
        """x ``(N, H)``: valid tokens only; or ``(..., H)`` as the transformers block takes (``(B, T, H)``):
        flattened to ``(N, H)``, ``out`` keeps the leading shape (routing and counts stay flat)."""
        if x.dim() != 2:
            if x.dim() < 1:
                raise ValueError(f"MoELayer expects (..., hidden) input, got shape {tuple(x.shape)}")
            result = self.forward(x.reshape(-1, x.shape[-1]))
            return dataclasses.replace(result, out=result.out.reshape(*x.shape[:-1], result.out.shape[-1]))
        c = self.config
        n = x.shape[0]
        routing = self.gate(x)
        out, counts = dispatch_to_experts(self.experts, x, routing, c.kernel)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out += shared.to(out.dtype)  # in place: the combine's fresh output, one (N, M) buffer fewer
        if self.training and c.router == "sigmoid":
            with torch.no_grad():
                if self.load_since_update.device != counts.device:
                    self.load_since_update = self.load_since_update.to(counts.device)
                self.load_since_update += counts.to(self.load_since_update.dtype)
        # the z-loss costs a logsumexp over every token: computed only when it is used
        z_loss = (
            torch.logsumexp(routing.logits, dim=-1).pow(2).mean() if n and c.z_loss_coef else x.new_zeros(())
        )
        return MoELayerOutput(
            out=out,
            routing=routing,
            tokens_per_expert=counts,
            load_balance_loss=self._load_balance_loss(routing),
            z_loss=z_loss,
        )

    def _load_balance_loss(self, routing: RoutingResult) -> torch.Tensor:
        """Switch/GShard: ``S · Σ_s frac_assignments_s · mean_prob_s`` over all S router slots (null ones too);
        1.0 at perfect balance."""
        slots = routing.probs.shape[-1]
        idx = routing.indices.reshape(-1)
        idx = idx[idx >= 0]
        if idx.numel() == 0:
            return routing.probs.new_zeros(())
        frac = torch.bincount(idx, minlength=slots).to(routing.probs.dtype) / idx.numel()
        return slots * (frac * routing.probs.mean(0)).sum()

    @torch.no_grad()
    def update_router_bias(self) -> None:
        """Aux-loss-free balancing step (DeepSeek-V3): raise the bias of under-loaded experts, lower the
        over-loaded, by ``bias_update_rate · sign(mean_load - load)``. Called once per optimizer step."""
        if self.config.router != "sigmoid":
            return
        bias = self.gate.e_score_correction_bias
        load = self.load_since_update.to(bias.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)  # every rank sees the global load and makes the same update
        if load.sum() > 0:
            bias += self.config.bias_update_rate * torch.sign(load.mean() - load)
        self.load_since_update = torch.zeros_like(load)

    @classmethod
    def from_hf(cls, block: nn.Module, kernel: str = "auto") -> MoELayer:
        """Build from a transformers ``Qwen2MoeSparseMoeBlock`` (same parameter names and shapes)."""
        experts, router = block.experts, block.gate
        e, two_i, h = experts.gate_up_proj.shape
        hf_config = getattr(experts, "config", None)
        act = getattr(hf_config, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"only SiLU experts are supported, the block uses {act!r}")
        shared = getattr(block, "shared_expert", None)
        config = MoEAdapterConfig(
            input_dim=h,
            output_dim=h,
            downsample="none",
            downsample_factor=1,
            num_experts=e,
            top_k=router.top_k,
            expert_hidden_dim=two_i // 2,
            num_shared_experts=1 if shared is not None else 0,
            shared_hidden_dim=shared.gate_proj.out_features if shared is not None else None,
            shared_expert_gate=getattr(block, "shared_expert_gate", None) is not None,
            norm_topk_prob=bool(router.norm_topk_prob),
            load_balance_coef=0.0,
            kernel=kernel,
        )
        layer = cls(config, h, h).to(dtype=experts.gate_up_proj.dtype, device=experts.gate_up_proj.device)
        layer.load_state_dict(block.state_dict())
        return layer


@register_adapter("moe", MoEAdapterConfig)
class MoEAdapter(Adapter):
    """front -> [LN] -> MoELayer (routed + shared experts) -> [aggregation] -> [LN] -> ``(B, T', D)``."""

    config: MoEAdapterConfig

    def __init__(self, config: MoEAdapterConfig) -> None:
        super().__init__(config)
        self.front = DownsampleFront(
            config.downsample, config.downsample_factor, config.input_dim, config.fuse_dim
        )
        h = self.front.output_dim
        self.norm_in = nn.LayerNorm(h) if config.pre_norm else nn.Identity()
        if config.aggregation == "none":
            mixture_dim = config.output_dim
            self.aggregate: nn.Module = nn.Identity()
        else:
            if not config.mixture_dim:
                raise ConfigError("aggregation needs mixture_dim (the experts' output width)")
            mixture_dim = config.mixture_dim
            if config.aggregation == "linear":
                self.aggregate = nn.Linear(mixture_dim, config.output_dim)
            else:
                hidden = config.aggregation_hidden_dim or config.output_dim
                self.aggregate = nn.Sequential(
                    nn.Linear(mixture_dim, hidden), nn.SiLU(), nn.Linear(hidden, config.output_dim)
                )
        self.moe = MoELayer(config, h, mixture_dim)
        needs_norm = config.output_norm or config.aggregation != "none"
        self.norm_out = nn.LayerNorm(config.output_dim) if needs_norm else nn.Identity()

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> AdapterOutput:
        c = self.config
        x, out_mask = self.front(features, self.validate_input(features, mask))
        x = self.norm_in(x)
        b, t, _ = x.shape
        layer = self.moe(x[out_mask])  # valid tokens only: padding enters no statistic
        y = self.norm_out(self.aggregate(layer.out))
        embeds = y.new_zeros(b, t, y.shape[-1])
        embeds[out_mask] = y
        routing = layer.routing
        k, slots = routing.indices.shape[1], routing.logits.shape[1]
        logits = routing.logits.new_zeros(b, t, slots)
        logits[out_mask] = routing.logits
        indices = routing.indices.new_full((b, t, k), -1)
        indices[out_mask] = routing.indices
        weights = routing.weights.new_zeros(b, t, k)
        weights[out_mask] = routing.weights
        losses = {"load_balance": layer.load_balance_loss, "z_loss": layer.z_loss}
        aux = c.load_balance_coef * layer.load_balance_loss + c.z_loss_coef * layer.z_loss
        return AdapterOutput(
            embeds=embeds,
            mask=out_mask,
            aux_loss=aux,
            aux_losses=losses,
            router_logits=logits,
            expert_indices=indices,
            expert_weights=weights,
            tokens_per_expert=layer.tokens_per_expert,
        )

    def active_parameters(self) -> int:
        """All parameters except the routed experts not chosen: routed experts count ``top_k / E`` of theirs
        (null experts have no parameters; top-p routing is counted at its cap ``top_k``)."""
        c = self.config
        total = sum(p.numel() for p in self.parameters())
        routed = sum(p.numel() for p in self.moe.experts.parameters())
        real_k = min(c.top_k, c.num_experts)
        return total - routed + routed * real_k // c.num_experts


def moe_layers(module: nn.Module) -> list[MoELayer]:
    return [m for m in module.modules() if isinstance(m, MoELayer)]


def update_router_biases(module: nn.Module) -> None:
    """Apply the aux-loss-free bias step to every sigmoid-routed MoE layer in ``module``."""
    for layer in moe_layers(module):
        layer.update_router_bias()


def attach_router_bias_update(optimizer: torch.optim.Optimizer, module: nn.Module):
    """Run :func:`update_router_biases` before every ``optimizer.step()`` (so loads accumulated over all
    gradient-accumulation micro-batches drive one update). Returns the hook handle."""
    return optimizer.register_step_pre_hook(lambda *_: update_router_biases(module))
