"""Gradient conflict between audio categories / tasks, measured on an adapter's parameters.

The paper's claim is that a dense adapter makes the gradients of different kinds of audio fight, and that a
sparse MoE adapter reduces the fight. This module measures it, generically over any ``nn.Module``:

1. A **parameter selection** names groups of parameter slices: the whole adapter, and for an MoE adapter each
   routed expert (a slice along dim 0 of every per-expert tensor such as ``gate_up_proj[E, 2I, H]``) and the
   shared part (router, shared experts, aggregation, downsampling front).
2. **Probe batches**, one list per group (``{"speech": [b0, b1], "music": [...], ...}``), and a loss function
   ``loss_fn(model, batch) -> scalar``.
3. For each batch index ``b`` and each group ``g`` one backward pass gives ``grad_g,b``; from those:
   the pairwise cosine matrix averaged over batches, the **conflict ratio** (share of (batch, pair) cosines that are
   negative), and **gradient magnitude similarity** ``2|g1||g2| / (|g1|^2 + |g2|^2)`` (Yu et al. 2020, PCGrad).
4. The **influence score** (look-ahead inter-task affinity, Fifty et al. 2021): one plain SGD step with learning
   rate ``lr`` on group A's gradient, then ``Z[A, B] = 1 - L_B(after) / L_B(before)``; positive means a step on A
   lowers B's loss. Weights are restored afterwards.

Gradients come from ``torch.autograd.grad``, so ``.grad`` of the training loop is never touched, and module buffers
(load counters, running statistics) are restored after every measurement: analysis never changes training.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

WHOLE = "adapter"  # name of the selection holding every trainable parameter
SHARED = "shared"  # an MoE's parameters that are not per-expert


@dataclass(frozen=True)
class ParamSlice:
    """A parameter, or its slice ``param[index]`` along dim 0 (one routed expert)."""

    name: str
    param: nn.Parameter
    index: int | None = None

    def take(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self.index is None else grad[self.index]


ParameterSelection = dict[str, list[ParamSlice]]


def detect_num_experts(module: nn.Module) -> int | None:
    """Routed experts of an MoE adapter (``config.num_experts`` of it or of a submodule), else None."""
    for sub in module.modules():
        num = getattr(getattr(sub, "config", None), "num_experts", None)
        if isinstance(num, int) and num > 0:
            return num
    return None


def _is_per_expert(name: str, param: nn.Parameter, num_experts: int) -> bool:
    """True for tensors that stack one slice per routed expert along dim 0.

    Every 3-D parameter with ``E`` rows is per-expert (``gate_up_proj[E, 2I, H]``, ``down_proj[E, H, I]``, the
    ``ffn`` expert's weights); a 1-/2-D parameter with ``E`` rows is per-expert only when it lives under an
    ``experts`` module (per-expert biases / LayerNorm weights), because the router's ``weight[E, H]`` also has ``E``
    rows and belongs to the shared part.
    """
    if param.ndim == 0 or param.shape[0] != num_experts:
        return False
    if param.ndim == 3:
        return True
    return "experts" in name.split(".")[:-1]


def select_parameters(module: nn.Module, num_experts: int | None = None) -> ParameterSelection:
    """Named parameter selections of ``module`` (normally the adapter).

    Always ``"adapter"`` (every trainable parameter). With routed experts (``num_experts`` given or detected
    from ``config.num_experts``) also ``"expert_0" .. "expert_{E-1}"`` and ``"shared"``. A dense adapter simply
    gets the one selection.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(module).__name__} has no trainable parameters to analyse")
    selection: ParameterSelection = {WHOLE: [ParamSlice(n, p) for n, p in named]}
    num_experts = num_experts if num_experts is not None else detect_num_experts(module)
    if not num_experts:
        return selection
    per_expert = [(n, p) for n, p in named if _is_per_expert(n, p, num_experts)]
    if not per_expert:
        return selection
    for e in range(num_experts):
        selection[f"expert_{e}"] = [ParamSlice(n, p, e) for n, p in per_expert]
    expert_names = {n for n, _ in per_expert}
    shared = [ParamSlice(n, p) for n, p in named if n not in expert_names]
    if shared:
        selection[SHARED] = shared
    return selection


def adapter_of(model: nn.Module) -> nn.Module:
    """The adapter inside an audio-language model (``model.adapter``), or the model itself."""
    adapter = getattr(model, "adapter", None)
    return adapter if isinstance(adapter, nn.Module) else model


def default_loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Calls ``model(**batch)`` (or ``model(batch)``) and takes the task loss.

    The next-token loss ``lm_loss`` is preferred over ``loss`` because the balancing term is a regulariser,
    not a task: its gradient would make every pair of categories look aligned.
    """
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    if isinstance(out, torch.Tensor):
        return out
    for name in ("lm_loss", "loss"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"{type(out).__name__} has neither .lm_loss nor .loss; pass loss_fn explicitly")


@contextlib.contextmanager
def preserved_state(model: nn.Module, params: Sequence[nn.Parameter] = ()) -> Iterator[None]:
    """Restore buffers, the given parameters and the train/eval modes on exit."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    saved = [(p, p.detach().clone()) for p in params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, copy in itertools.chain(buffers, saved):
                tensor.copy_(copy)
        for m, mode in modes:
            m.train(mode)


@dataclass
class ConflictStats:
    """Gradient agreement between groups on one parameter selection.

    cosine, magnitude_similarity: ``(G, G)`` means over batches (NaN where a gradient was zero in every batch,
    e.g. an expert no frame of a group was routed to).
    grad_norm: ``(G,)`` mean gradient norm per group.
    conflict_ratio: share of negative cosines among all defined (batch, unordered pair) cosines.
    """

    groups: list[str]
    cosine: np.ndarray
    magnitude_similarity: np.ndarray
    grad_norm: np.ndarray
    conflict_ratio: float
    num_batches: int

    def pair_cosines(self) -> dict[str, float]:
        """``{"music|sound": cos, ...}`` for each unordered pair."""
        return {
            f"{a}|{b}": float(self.cosine[i, j])
            for (i, a), (j, b) in itertools.combinations(enumerate(self.groups), 2)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "conflict_ratio": _json_float(self.conflict_ratio),
            "mean_cosine": {k: _json_float(v) for k, v in self.pair_cosines().items()},
            "cosine": _json_matrix(self.cosine),
            "magnitude_similarity": _json_matrix(self.magnitude_similarity),
            "grad_norm": [_json_float(v) for v in self.grad_norm],
            "num_batches": self.num_batches,
        }


@dataclass
class GradientReport:
    """Everything measured by :func:`gradient_conflict`.

    selections: stats per parameter selection (``"adapter"``, ``"expert_i"``, ``"shared"``).
    loss: ``(G,)`` mean probe loss per group before any step.
    influence: ``(G, G)`` with ``[a, b] = 1 - L_b(after a step on a) / L_b(before)``, or None when not asked for.
    """

    groups: list[str]
    selections: dict[str, ConflictStats]
    loss: np.ndarray
    influence: np.ndarray | None = None
    influence_lr: float | None = None
    seconds: float = 0.0

    @property
    def conflict_ratio(self) -> float:
        return self.selections[WHOLE].conflict_ratio

    @property
    def cosine(self) -> np.ndarray:
        return self.selections[WHOLE].cosine

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "groups": list(self.groups),
            "conflict_ratio": _json_float(self.conflict_ratio),
            "mean_cosine": {k: _json_float(v) for k, v in self.selections[WHOLE].pair_cosines().items()},
            "cosine": _json_matrix(self.cosine),
            "loss": [_json_float(v) for v in self.loss],
            "selections": {name: s.to_dict() for name, s in self.selections.items()},
            "seconds": round(self.seconds, 3),
        }
        if self.influence is not None:
            out["influence"] = {
                f"{a}->{b}": _json_float(self.influence[i, j])
                for i, a in enumerate(self.groups)
                for j, b in enumerate(self.groups)
            }
            out["influence_lr"] = self.influence_lr
        return out


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def _json_matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[_json_float(v) for v in row] for row in m]


def _check_probes(probes: Mapping[str, Sequence[Batch]]) -> tuple[list[str], int]:
    groups = [g for g, batches in probes.items() if len(batches) > 0]
    if len(groups) < 2:
        raise ValueError(
            f"gradient conflict needs probe batches for at least two groups, got {sorted(probes)} "
            f"(non-empty: {groups}); add batches of another category or task"
        )
    return groups, min(len(probes[g]) for g in groups)


def _gram(
    per_group: Sequence[Sequence[torch.Tensor]], slices: Sequence[ParamSlice], index: Mapping[int, int]
) -> np.ndarray:
    """``(G, G)`` dot products of the groups' gradients over the selected slices, accumulated slice by slice in
    fp64 (never one flat copy of a large adapter's gradient per group)."""
    gram = torch.zeros(len(per_group), len(per_group), dtype=torch.float64)
    for s in slices:
        vecs = torch.stack([s.take(g[index[id(s.param)]]).reshape(-1) for g in per_group]).double()  # (G, n)
        gram += (vecs @ vecs.T).cpu()
    return gram.numpy()


def gradient_conflict(
    model: nn.Module,
    probes: Mapping[str, Sequence[Batch]],
    loss_fn: LossFn = default_loss_fn,
    selection: ParameterSelection | None = None,
    influence_lr: float | None = None,
    eval_mode: bool = True,
) -> GradientReport:
    """Per-group gradients on ``selection`` (default: ``select_parameters(adapter_of(model))``) and their agreement.

    probes: ``{group: [batch, ...]}``; batch ``b`` of every group is used together, up to the shortest list.
    influence_lr: when given, also the look-ahead influence score with one SGD step of this size on the
    ``"adapter"`` selection.
    eval_mode: measure with dropout off (the modes are restored afterwards).
    """
    start = time.perf_counter()
    groups, num_batches = _check_probes(probes)
    selection = selection if selection is not None else select_parameters(adapter_of(model))
    params = list({id(s.param): s.param for s in itertools.chain.from_iterable(selection.values())}.values())
    index = {id(p): i for i, p in enumerate(params)}
    num_groups = len(groups)
    dots = {name: np.zeros((num_batches, num_groups, num_groups)) for name in selection}
    losses = np.zeros((num_batches, num_groups))
    influence = np.zeros((num_batches, num_groups, num_groups)) if influence_lr is not None else None

    with preserved_state(model, params if influence_lr is not None else ()):
        if eval_mode:
            model.eval()
        for b in range(num_batches):
            per_group: list[list[torch.Tensor]] = []
            for gi, group in enumerate(groups):
                loss = loss_fn(model, probes[group][b])
                losses[b, gi] = float(loss.detach())
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                per_group.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
            for name, slices in selection.items():
                dots[name][b] = _gram(per_group, slices, index)
            if influence is not None:
                influence[b] = _lookahead(
                    model, probes, groups, b, params, per_group, losses[b], influence_lr, loss_fn
                )
            del per_group

    stats = {name: _stats(groups, d) for name, d in dots.items()}
    return GradientReport(
        groups=groups,
        selections=stats,
        loss=losses.mean(axis=0),
        influence=None if influence is None else influence.mean(axis=0),
        influence_lr=influence_lr,
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def _lookahead(
    model: nn.Module,
    probes: Mapping[str, Sequence[Batch]],
    groups: list[str],
    b: int,
    params: list[nn.Parameter],
    per_group: list[list[torch.Tensor]],
    loss_before: np.ndarray,
    lr: float,
    loss_fn: LossFn,
) -> np.ndarray:
    """``Z[a, c] = 1 - L_c(theta - lr * g_a) / L_c(theta)`` on batch ``b``; parameters restored after each a."""
    out = np.zeros((len(groups), len(groups)))
    saved = [p.detach().clone() for p in params]
    for a, grads in enumerate(per_group):
        for p, g in zip(params, grads):
            p.sub_(g.to(p.dtype), alpha=lr)
        for c, group in enumerate(groups):
            after = float(loss_fn(model, probes[group][b]))
            out[a, c] = 1.0 - after / loss_before[c] if loss_before[c] != 0 else float("nan")
        for p, s in zip(params, saved):
            p.copy_(s)
    return out


def _stats(groups: list[str], dots: np.ndarray) -> ConflictStats:
    """Cosines and magnitude similarities from per-batch Gram matrices ``(B, G, G)``."""
    sq = np.einsum("bii->bi", dots)  # (B, G) squared norms
    norms = np.sqrt(np.maximum(sq, 0.0))
    outer = norms[:, :, None] * norms[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(outer > 0, dots / outer, np.nan)
        denom = sq[:, :, None] + sq[:, None, :]
        gms = np.where(denom > 0, 2 * outer / denom, np.nan)
    iu = np.triu_indices(len(groups), k=1)
    pair_cos = cos[:, iu[0], iu[1]].reshape(-1)
    defined = pair_cos[np.isfinite(pair_cos)]
    conflict = float((defined < 0).mean()) if defined.size else float("nan")
    return ConflictStats(
        groups=list(groups),
        cosine=_nanmean0(cos),
        magnitude_similarity=_nanmean0(gms),
        grad_norm=norms.mean(axis=0),
        conflict_ratio=conflict,
        num_batches=dots.shape[0],
    )


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where every entry is NaN (without numpy's warning)."""
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    total = np.where(finite, x, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass
class GradientConflictTracker:
    """Measures gradient conflict every ``interval`` optimizer steps of a training loop.

    Each measurement costs one forward+backward per (group, probe batch), without optimizer work (plus ``G x G``
    forwards with ``influence_lr``). Measured on a tiny MoE-adapter model (3 groups x 1 probe batch of the
    training batch size, CPU): one measurement = 2.4 training steps, so the default ``interval=100`` costs about
    2.4% of training time (interval 25: 9.5%).

    Usage::

        tracker = GradientConflictTracker(model, probes, interval=100)
        for step, batch in enumerate(loader, 1):
            ...; optimizer.step()
            tracker.maybe_update(step)
        tracker.history  # [(step, GradientReport), ...]
    """

    model: nn.Module
    probes: Mapping[str, Sequence[Batch]]
    loss_fn: LossFn = default_loss_fn
    interval: int = 100
    selection: ParameterSelection | None = None
    influence_lr: float | None = None
    history: list[tuple[int, GradientReport]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"GradientConflictTracker.interval must be >= 1, got {self.interval}")
        _check_probes(self.probes)
        if self.selection is None:
            self.selection = select_parameters(adapter_of(self.model))

    def maybe_update(self, step: int) -> GradientReport | None:
        """Measure when ``step`` is a multiple of ``interval``; returns the report or None."""
        if step % self.interval:
            return None
        return self.update(step)

    def update(self, step: int) -> GradientReport:
        report = gradient_conflict(
            self.model, self.probes, self.loss_fn, self.selection, influence_lr=self.influence_lr
        )
        self.history.append((step, report))
        return report

    def log_record(self) -> dict[str, float | None]:
        """Flat figures of the latest measurement for a metrics log, e.g. ``{"grad/conflict_ratio": 0.33,
        "grad/cos/speech|music": 0.01, ...}``; empty before the first measurement."""
        if not self.history:
            return {}
        _, report = self.history[-1]
        record = {"grad/conflict_ratio": _json_float(report.conflict_ratio)}
        record.update({f"grad/cos/{k}": v for k, v in report.to_dict()["mean_cosine"].items()})
        return record

    def summary(self) -> list[dict[str, Any]]:
        """JSON-able history: step, conflict ratio, mean pair cosines (whole adapter)."""
        return [
            {
                "step": step,
                "conflict_ratio": _json_float(r.conflict_ratio),
                "mean_cosine": r.to_dict()["mean_cosine"],
            }
            for step, r in self.history
        ]
