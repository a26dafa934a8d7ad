"""Expert specialisation and routing health, from the routing fields of :class:`AdapterOutput`.

:class:`RoutingCollector` gathers, for every *valid* output frame (``mask`` True), the chosen experts
(``expert_indices``, ``-1`` slots dropped), its top-1 expert, the router's entropy, and the clip's attributes
(audio category, gender, speaker, task, ...). Padding frames are dropped when collected, so they cannot enter any
statistic. :class:`RoutingStats` then gives:

- expert activation rate per attribute value: share of that value's frames whose chosen experts include expert e,
  next to the uniform level ``k / E`` (the paper's Figure 3);
- normalised mutual information between top-1 expert and each attribute (arithmetic-mean normalisation, as
  sklearn's default);
- load balance: coefficient of variation and max/mean of the per-expert load, dead experts, router entropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audiomoe.adapters.base import AdapterOutput

NO_EXPERT = -1  # top-1 of a frame that chose no real expert (null experts only)


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a count or probability vector; 0 for an empty one."""
    p = np.asarray(counts, dtype=np.float64).ravel()
    total = p.sum()
    if total <= 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(
    labels_a: Sequence[Any] | np.ndarray, labels_b: Sequence[Any] | np.ndarray
) -> float:
    """NMI(a, b) = I(a; b) / ((H(a) + H(b)) / 2), in [0, 1].

    Labels are any hashable values. When both labellings are constant NMI is 1 (they agree perfectly); when only
    one is, it is 0 (it carries no information), the same conventions as sklearn.
    """
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"NMI needs two 1-D label arrays of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return float("nan")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1.0)
    h_a, h_b = entropy(table.sum(axis=1)), entropy(table.sum(axis=0))
    if h_a == 0.0 and h_b == 0.0:
        return 1.0
    if h_a == 0.0 or h_b == 0.0:
        return 0.0
    mutual = h_a + h_b - entropy(table)  # I = H(a) + H(b) - H(a, b)
    return float(np.clip(mutual / ((h_a + h_b) / 2), 0.0, 1.0))


@dataclass
class ActivationTable:
    """rates[v, e]: share of frames with attribute value ``values[v]`` whose chosen experts include ``e``.

    frames[v]: valid frames of that value; uniform: the rate every cell would have under uniform routing,
    ``k / E`` with k the mean number of real experts per frame.
    """

    attribute: str
    values: list[str]
    rates: np.ndarray
    frames: np.ndarray
    uniform: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "rates": np.round(self.rates, 6).tolist(),
            "frames": self.frames.tolist(),
            "uniform": round(self.uniform, 6),
        }


@dataclass
class BalanceStats:
    """Per-expert load (share of all routed slots), and figures of its evenness.

    cv: std / mean of the load; max_over_mean: the busiest expert's load over the mean (1 is perfect);
    dead_experts: experts that no valid frame chose; router_entropy: mean per-frame entropy of the softmax of the
    router logits (nats; NaN without logits), and normalised by the log of its width; load_entropy_normalized:
    entropy of the load / log E (1 = perfectly even).
    """

    load: np.ndarray
    cv: float
    max_over_mean: float
    dead_experts: list[int]
    router_entropy: float
    router_entropy_normalized: float
    load_entropy_normalized: float
    frames: int

    def to_dict(self) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return round(float(x), 6) if np.isfinite(x) else None

        return {
            "load": np.round(self.load, 6).tolist(),
            "cv": f(self.cv),
            "max_over_mean": f(self.max_over_mean),
            "dead_experts": self.dead_experts,
            "router_entropy": f(self.router_entropy),
            "router_entropy_normalized": f(self.router_entropy_normalized),
            "load_entropy_normalized": f(self.load_entropy_normalized),
            "frames": self.frames,
        }


@dataclass
class RoutingStats:
    """Routing of N valid frames.

    expert_indices: ``(N, K)`` int, ``-1`` in unused slots; top1: ``(N,)`` (``-1`` if no real expert);
    router_entropy: ``(N,)`` per-frame router entropy (nats) or None; attributes: name -> ``(N,)`` str values.
    """

    num_experts: int
    expert_indices: np.ndarray
    top1: np.ndarray
    attributes: dict[str, np.ndarray]
    router_entropy: np.ndarray | None = None
    router_slots: int | None = None  # width of the router's softmax (experts + null experts); default E

    @property
    def num_frames(self) -> int:
        return int(self.top1.shape[0])

    def _selected(self) -> np.ndarray:
        """``(N, E)`` bool: frame n chose expert e."""
        hit = np.zeros((self.num_frames, self.num_experts), dtype=bool)
        rows, slots = np.nonzero(self.expert_indices >= 0)
        hit[rows, self.expert_indices[rows, slots]] = True
        return hit

    def _values(self, attribute: str) -> np.ndarray:
        if attribute not in self.attributes:
            raise KeyError(f"attribute {attribute!r} was not collected; known: {sorted(self.attributes)}")
        return self.attributes[attribute]

    def activation_rates(self, attribute: str) -> ActivationTable:
        values = self._values(attribute)
        hit = self._selected()
        names = sorted(set(values.tolist()))
        rates = np.zeros((len(names), self.num_experts))
        frames = np.zeros(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            rows = values == name
            frames[i] = int(rows.sum())
            rates[i] = hit[rows].mean(axis=0)
        k = float(hit.sum(axis=1).mean()) if self.num_frames else 0.0
        return ActivationTable(attribute, names, rates, frames, k / max(self.num_experts, 1))

    def nmi(self, attribute: str) -> float:
        """NMI between each frame's top-1 expert and the attribute."""
        return normalized_mutual_information(self.top1, self._values(attribute))

    def nmi_chance(self, attribute: str, seed: int = 0) -> float:
        """NMI after shuffling the attribute over frames: the level a router ignoring it reaches on this many
        frames (NMI is biased upwards for small samples and many values, e.g. speaker ids)."""
        values = self._values(attribute)
        return normalized_mutual_information(self.top1, np.random.default_rng(seed).permutation(values))

    def balance(self) -> BalanceStats:
        counts = self._selected().sum(axis=0).astype(np.float64)
        total = counts.sum()
        load = counts / total if total > 0 else counts
        mean = load.mean() if load.size else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = float(load.std() / mean) if mean > 0 else float("nan")
            max_over_mean = float(load.max() / mean) if mean > 0 else float("nan")
        log_e = np.log(self.num_experts) if self.num_experts > 1 else float("nan")
        slots = self.router_slots or self.num_experts
        log_slots = np.log(slots) if slots > 1 else float("nan")
        has_entropy = self.router_entropy is not None and self.num_frames > 0
        router_h = float(self.router_entropy.mean()) if has_entropy else float("nan")
        return BalanceStats(
            load=load,
            cv=cv,
            max_over_mean=max_over_mean,
            dead_experts=[int(e) for e in np.nonzero(counts == 0)[0]],
            router_entropy=router_h,
            router_entropy_normalized=router_h / log_slots,
            load_entropy_normalized=entropy(counts) / log_e,
            frames=self.num_frames,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: balance, NMI and activation rates per attribute."""
        attrs = sorted(self.attributes)
        return {
            "num_experts": self.num_experts,
            "frames": self.num_frames,
            "balance": self.balance().to_dict(),
            "nmi": {a: round(self.nmi(a), 6) for a in attrs},
            "nmi_chance": {a: round(self.nmi_chance(a), 6) for a in attrs},
            "activation": {a: self.activation_rates(a).to_dict() for a in attrs},
        }


class RoutingCollector:
    """Accumulates routing of valid frames over batches; dense adapters (no routing fields) are skipped.

    Usage::

        collector = RoutingCollector()
        for batch, records in loader:
            out = model(**batch)
            collector.add(out.adapter_output, [r.attributes for r in records])
        stats = collector.stats()  # None if the adapter never routed
    """

    def __init__(self) -> None:
        self._indices: list[np.ndarray] = []
        self._top1: list[np.ndarray] = []
        self._entropy: list[np.ndarray] = []
        self._attrs: list[dict[str, np.ndarray]] = []
        self._num_experts: int | None = None
        self._router_slots: int | None = None

    @property
    def has_routing(self) -> bool:
        return self._num_experts is not None

    @torch.no_grad()
    def add(self, output: AdapterOutput, attributes: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Record the valid frames of one batch.

        output: the adapter's output; ``mask (B, T')`` selects the frames that count.
        attributes: one mapping per batch item (clip-level attributes, broadcast to its frames).
        """
        if output.expert_indices is None:
            return
        idx = output.expert_indices
        batch = idx.shape[0]
        if attributes is not None and len(attributes) != batch:
            raise ValueError(f"got {len(attributes)} attribute mappings for a batch of {batch} clips")
        num_experts = self._experts_of(output)
        if self._num_experts not in (None, num_experts):
            raise ValueError(
                f"routing with {num_experts} experts after {self._num_experts}; one model at a time"
            )
        self._num_experts = num_experts
        mask = output.mask.bool()
        valid = idx[mask].long().cpu()  # (N, K): padding is gone from here on
        # null experts (zero-compute slots, indices >= E) are not experts: count them as unused slots
        valid = torch.where(valid < num_experts, valid, torch.full_like(valid, -1))
        self._indices.append(valid.numpy())
        self._top1.append(
            _top1(valid, None if output.expert_weights is None else output.expert_weights[mask])
        )
        if output.router_logits is not None:
            probs = torch.softmax(output.router_logits[mask].float(), dim=-1)
            self._router_slots = int(probs.shape[-1])
            self._entropy.append((-(probs * probs.clamp_min(1e-12).log()).sum(-1)).cpu().numpy())
        per_item = mask.sum(dim=1).cpu().tolist()
        self._attrs.append(_broadcast_attributes(attributes or [{}] * batch, per_item))

    def _experts_of(self, output: AdapterOutput) -> int:
        # tokens_per_expert counts real experts only; router logits may also score null experts
        if output.tokens_per_expert.numel():
            return int(output.tokens_per_expert.numel())
        if output.router_logits is not None:
            return int(output.router_logits.shape[-1])
        if self._num_experts is not None:
            return self._num_experts
        raise ValueError("AdapterOutput has expert_indices but neither router_logits nor tokens_per_expert")

    def stats(self) -> RoutingStats | None:
        if self._num_experts is None:
            return None
        width = max(a.shape[1] for a in self._indices)
        indices = np.concatenate(
            [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in self._indices]
        )
        names = sorted({k for chunk in self._attrs for k in chunk})
        attributes = {
            name: np.concatenate(
                [
                    chunk.get(name, np.full(len(t), "?", dtype=object))
                    for chunk, t in zip(self._attrs, self._top1)
                ]
            )
            for name in names
        }
        entropy_arr = np.concatenate(self._entropy) if len(self._entropy) == len(self._indices) else None
        return RoutingStats(
            self._num_experts,
            indices,
            np.concatenate(self._top1),
            attributes,
            entropy_arr,
            self._router_slots,
        )


def _top1(indices: torch.Tensor, weights: torch.Tensor | None) -> np.ndarray:
    """The chosen expert with the largest gate weight (first valid slot without weights); -1 if none."""
    valid = indices >= 0
    if weights is None:
        score = valid.float() * torch.arange(indices.shape[1], 0, -1).float()  # earlier slot wins
    else:
        score = torch.where(valid, weights.float().cpu(), torch.full_like(weights.float().cpu(), -torch.inf))
    best = score.argmax(dim=1, keepdim=True)
    top = indices.gather(1, best).squeeze(1)
    return torch.where(valid.any(dim=1), top, torch.full_like(top, NO_EXPERT)).numpy()


def _broadcast_attributes(
    attributes: Sequence[Mapping[str, Any]], frames_per_item: list[int]
) -> dict[str, np.ndarray]:
    """Clip attributes -> per-frame string arrays (missing keys become ``"?"``)."""
    names = sorted({k for a in attributes for k, v in a.items() if _is_label(v)})
    return {
        name: np.array(
            [str(a.get(name, "?")) for a, n in zip(attributes, frames_per_item) for _ in range(n)],
            dtype=object,
        )
        for name in names
    }


def _is_label(value: Any) -> bool:
    """Only scalar, categorical attributes are labels (not durations, lists, paths of float features)."""
    return isinstance(value, (str, bool, int)) and not isinstance(value, float)
