"""Routing statistics: NMI, activation rates, balance, padding exclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiomoe.adapters.base import AdapterOutput
from audiomoe.analysis.routing import RoutingCollector, entropy, normalized_mutual_information

E, K = 4, 2


def _output(indices: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None) -> AdapterOutput:
    """An AdapterOutput carrying only routing fields; weights favour slot 0."""
    b, t, k = indices.shape
    weights = torch.linspace(1.0, 0.5, k).expand(b, t, k) * (indices >= 0)
    if logits is None:
        logits = torch.zeros(b, t, E)
    return AdapterOutput(
        embeds=torch.zeros(b, t, 1),
        mask=mask,
        aux_loss=torch.zeros(()),
        router_logits=logits,
        expert_indices=indices,
        expert_weights=weights,
        tokens_per_expert=torch.zeros(E, dtype=torch.long),
    )


def test_nmi_hand_computed() -> None:
    # a = [0,0,1,1], b = [0,1,1,1]: H(a)=ln2, H(b)=H(1/4,3/4), H(a,b)=H(1/4,1/4,1/2)
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    ha, hb, hab = h(0.5, 0.5), h(0.25, 0.75), h(0.25, 0.25, 0.5)
    expected = (ha + hb - hab) / ((ha + hb) / 2)
    assert normalized_mutual_information([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(expected)
    assert expected == pytest.approx(0.34371, abs=1e-5)  # I = 0.215762 nats over mean H 0.627741
    assert normalized_mutual_information(["x", "x", "y", "y"], [7, 7, 3, 3]) == pytest.approx(1.0)
    assert normalized_mutual_information([1, 1, 1], [1, 1, 1]) == 1.0
    assert normalized_mutual_information([1, 1, 1], [1, 2, 3]) == 0.0
    assert entropy([1, 1]) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="equal length"):
        normalized_mutual_information([1, 2], [1])


def _categories(n_clips: int, gen: torch.Generator) -> list[str]:
    names = ["speech", "music", "sound"]
    return [names[i] for i in torch.randint(0, 3, (n_clips,), generator=gen).tolist()]


def test_router_hardwired_to_label_gives_nmi_one_random_gives_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    wired, random = RoutingCollector(), RoutingCollector()
    expert_of = {"speech": 0, "music": 1, "sound": 2}
    for _ in range(20):
        cats = _categories(16, gen)
        mask = torch.ones(16, 50, dtype=torch.bool)
        top1 = torch.tensor([expert_of[c] for c in cats])[:, None].expand(16, 50)
        idx = torch.stack([top1, (top1 + 1) % E], dim=-1)
        attrs = [{"category": c, "duration": 1.5} for c in cats]
        wired.add(_output(idx, mask), attrs)
        rand = torch.randint(0, E, (16, 50, 1), generator=gen)
        random.add(_output(torch.cat([rand, (rand + 1) % E], -1), mask), attrs)
    w, r = wired.stats(), random.stats()
    assert w is not None and r is not None
    assert w.nmi("category") == pytest.approx(1.0)
    assert r.nmi("category") < 0.005
    assert w.nmi_chance("category") < 0.005  # shuffled labels: the chance level on this many frames
    assert "duration" not in w.attributes  # floats are not labels
    table = w.activation_rates("category")
    assert table.values == ["music", "sound", "speech"]
    assert table.uniform == pytest.approx(K / E)
    np.testing.assert_allclose(table.rates[table.values.index("speech")], [1, 1, 0, 0])
    np.testing.assert_allclose(r.activation_rates("category").rates, 0.5, atol=0.03)


def test_padding_never_enters_statistics() -> None:
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, E, (3, 10, K), generator=gen)
    logits = torch.randn(3, 10, E, generator=gen)
    attrs = [{"category": "speech"}, {"category": "music"}, {"category": "sound"}]
    lengths = torch.tensor([10, 4, 7])
    mask = torch.arange(10)[None] < lengths[:, None]

    clean = RoutingCollector()
    for i, n in enumerate(lengths.tolist()):  # each clip alone, no padding at all
        clean.add(
            _output(idx[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool), logits[i : i + 1, :n]),
            attrs[i : i + 1],
        )

    padded = RoutingCollector()
    poisoned = torch.where(mask[..., None], idx, torch.full_like(idx, 3))  # padding says "expert 3" loudly
    padded.add(_output(poisoned, mask, torch.where(mask[..., None], logits, 50.0)), attrs)

    a, b = clean.stats(), padded.stats()
    assert a is not None and b is not None and b.num_frames == 21
    assert a.to_dict() == b.to_dict()
    assert a.balance().router_entropy == pytest.approx(b.balance().router_entropy)


def test_balance_figures_and_dead_experts() -> None:
    # expert 0 takes every first slot, experts 1/2 alternate the second, expert 3 never used
    n = 8
    first = torch.zeros(1, n, dtype=torch.long)
    second = torch.tensor([[1, 2] * (n // 2)])
    idx = torch.stack([first, second], -1)
    out = _output(idx, torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, E))
    c = RoutingCollector()
    c.add(out, [{"category": "speech"}])
    bal = c.stats().balance()
    np.testing.assert_allclose(bal.load, [0.5, 0.25, 0.25, 0.0])
    assert bal.max_over_mean == pytest.approx(2.0)
    assert bal.cv == pytest.approx(np.std([0.5, 0.25, 0.25, 0]) / 0.25)
    assert bal.dead_experts == [3]
    assert bal.router_entropy_normalized == pytest.approx(1.0)  # zero logits = uniform router
    assert c.stats().top1.tolist() == [0] * n


def test_unused_slots_and_dense_adapter() -> None:
    idx = torch.tensor([[[2, -1], [-1, -1], [1, 3]]])
    c = RoutingCollector()
    c.add(_output(idx, torch.ones(1, 3, dtype=torch.bool)), [{"task": "asr"}])
    s = c.stats()
    assert s.top1.tolist() == [2, -1, 1]
    assert s.activation_rates("task").uniform == pytest.approx(1.0 / E)  # 3 experts over 3 frames
    dense = RoutingCollector()
    dense.add(AdapterOutput(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(())), None)
    assert not dense.has_routing and dense.stats() is None


def test_real_adapters_end_to_end_with_null_experts() -> None:
    """The project's MoE (null experts on) and linear adapters through collector and gradient analysis."""
    from audiomoe.adapters import build_adapter
    from audiomoe.analysis.gradients import gradient_conflict

    torch.manual_seed(0)
    common = {"input_dim": 16, "output_dim": 8, "downsample": "stack", "downsample_factor": 2}
    moe = build_adapter(
        {
            "type": "moe",
            **common,
            "num_experts": 4,
            "top_k": 2,
            "expert_hidden_dim": 8,
            "expert_type": "ffn",
            "num_shared_experts": 1,
            "num_null_experts": 1,
        }
    )
    dense = build_adapter({"type": "linear", **common})
    x, mask = torch.randn(3, 8, 16), torch.arange(8)[None] < torch.tensor([[8], [5], [2]])
    collector = RoutingCollector()
    out = moe(x, mask)
    collector.add(out, [{"category": c} for c in ("speech", "music", "sound")])
    stats = collector.stats()
    assert stats.num_experts == 4 and stats.num_frames == int(out.mask.sum()) == 4 + 3 + 1
    assert stats.expert_indices.max() < 4  # the null expert (index 4) is not an expert
    np.testing.assert_array_equal(
        stats.balance().load * (stats.expert_indices >= 0).sum(), out.tokens_per_expert.numpy()
    )  # same counts as the adapter's own

    def loss(adapter: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return adapter(batch).embeds.pow(2).mean()

    probes = {"speech": [x[:2]], "music": [x[1:]]}
    for adapter, selections in ((moe, 6), (dense, 1)):
        report = gradient_conflict(adapter, probes, loss)
        assert len(report.selections) == selections and np.isfinite(report.conflict_ratio)
    dense_routing = RoutingCollector()
    dense_routing.add(dense(x, mask), [{}] * 3)
    assert dense_routing.stats() is None
