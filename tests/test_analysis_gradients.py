"""Gradient-conflict analysis on hand-made modules with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from audiomoe.analysis.gradients import (
    GradientConflictTracker,
    gradient_conflict,
    select_parameters,
)


class Linear(nn.Module):
    """y = w . x; the loss of a batch is the mean of ``y * sign`` so its gradient is a chosen direction."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w).mean()


def _loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch)


def test_opposite_gradients_conflict_ratio_one_and_cosine_minus_one() -> None:
    x = torch.randn(3, 8, 4)
    probes = {"speech": list(x), "music": list(-x)}
    report = gradient_conflict(Linear(), probes, _loss)
    assert report.conflict_ratio == 1.0
    assert report.cosine[0, 1] == pytest.approx(-1.0, abs=1e-9)
    assert report.selections["adapter"].magnitude_similarity[0, 1] == pytest.approx(1.0)
    assert report.selections["adapter"].num_batches == 3


def test_identical_gradients_cosine_one_and_magnitude_similarity() -> None:
    x = torch.randn(2, 8, 4)
    probes = {"a": list(x), "b": list(x), "c": list(3 * x)}
    report = gradient_conflict(Linear(), probes, _loss)
    np.testing.assert_allclose(report.cosine, np.ones((3, 3)), atol=1e-9)
    assert report.conflict_ratio == 0.0
    # |g_c| = 3 |g_a|: 2*3/(1+9) = 0.6
    assert report.selections["adapter"].magnitude_similarity[0, 2] == pytest.approx(0.6)
    assert report.to_dict()["mean_cosine"]["a|c"] == pytest.approx(1.0)


def test_orthogonal_and_mixed_batches_average() -> None:
    e = torch.eye(4)
    # batch 0: aligned; batch 1: opposite -> mean cosine 0, conflict ratio 1/2
    probes = {"a": [e[0:1], e[0:1]], "b": [e[0:1], -e[0:1]], "c": [e[1:2], e[1:2]]}
    report = gradient_conflict(Linear(), probes, _loss)
    assert report.cosine[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert report.cosine[0, 2] == pytest.approx(0.0, abs=1e-12)
    # pairs over 2 batches: (a,b)=+1,-1; (a,c)=0,0; (b,c)=0,0 -> 1 negative of 6
    assert report.conflict_ratio == pytest.approx(1 / 6)


class TinyMoE(nn.Module):
    """Hard routing by a per-frame label; experts are 3-D weights like transformers v5 ``gate_up_proj``."""

    def __init__(self, num_experts: int = 3, dim: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(dim, num_experts)  # weight [E, H]: E rows but shared, never sliced
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.randn(num_experts, dim, dim))
        self.experts.bias = nn.Parameter(torch.zeros(num_experts, dim))  # per-expert 2-D under "experts"
        self.shared = nn.Linear(dim, dim)
        self.config = type("Cfg", (), {"num_experts": num_experts})()

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, expert = batch
        w = self.experts.gate_up_proj[expert]  # (N, H, H)
        y = torch.einsum("nh,nkh->nk", x, w) + self.experts.bias[expert] + self.shared(x)
        return (y + self.router(x).sum(-1, keepdim=True) * 0).sum(-1).mean()


def test_moe_selection_slices_experts_and_keeps_router_shared() -> None:
    moe = TinyMoE()
    sel = select_parameters(moe)
    assert set(sel) == {"adapter", "expert_0", "expert_1", "expert_2", "shared"}
    assert {s.name for s in sel["expert_1"]} == {"experts.gate_up_proj", "experts.bias"}
    assert all(s.index == 1 for s in sel["expert_1"])
    assert {s.name for s in sel["shared"]} == {"router.weight", "router.bias", "shared.weight", "shared.bias"}


def test_per_expert_cosines_undefined_for_unused_expert() -> None:
    torch.manual_seed(0)
    moe = TinyMoE()
    x = torch.randn(6, 4)
    # speech -> expert 0, music -> expert 1; expert 2 is never used, expert 0 used by speech only
    probes = {
        "speech": [(x, torch.zeros(6, dtype=torch.long))],
        "music": [(-x, torch.ones(6, dtype=torch.long))],
    }
    report = gradient_conflict(moe, probes, lambda m, b: m(b))
    e2 = report.selections["expert_2"]
    assert np.isnan(e2.cosine[0, 1]) and math.isnan(e2.conflict_ratio)
    assert report.selections["expert_0"].grad_norm[1] == 0.0
    # the shared linear sees x and -x: exactly opposite gradient on its weight
    assert report.selections["shared"].cosine[0, 1] < 0
    js = report.to_dict()
    assert js["selections"]["expert_2"]["conflict_ratio"] is None


def test_influence_score_sign_and_weights_restored() -> None:
    torch.manual_seed(0)
    model = Linear()
    before = model.w.detach().clone()
    x = torch.rand(1, 8, 4) + 0.1  # positive inputs, so loss = w.x_mean moves with w

    def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return (m(batch) - 10.0) ** 2  # positive loss, shared minimum direction for a and b

    probes = {"a": list(x), "b": list(x), "neg": list(-x)}
    report = gradient_conflict(model, probes, loss_fn, influence_lr=1e-3)
    z = report.influence
    assert z is not None
    assert z[0, 1] > 0  # a step on a lowers b's loss (same data)
    assert z[0, 0] == pytest.approx(z[0, 1])
    assert torch.equal(model.w, before)  # look-ahead steps undone
    assert "a->neg" in report.to_dict()["influence"]


def test_dense_adapter_runs_without_experts_and_restores_buffers() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    dense.train()
    running = dense[1].running_mean.clone()
    x = torch.randn(2, 16, 4)
    probes = {"speech": list(x), "sound": list(x + 1)}
    report = gradient_conflict(dense, probes, lambda m, b: m(b).pow(2).mean(), eval_mode=False)
    assert list(report.selections) == ["adapter"]
    assert -1.0 <= report.cosine[0, 1] <= 1.0
    assert torch.equal(dense[1].running_mean, running)  # BN statistics untouched
    assert dense.training
    assert all(p.grad is None for p in dense.parameters())  # the training loop's .grad is never written


def test_tracker_interval_and_errors() -> None:
    x = torch.randn(1, 8, 4)
    tracker = GradientConflictTracker(Linear(), {"a": list(x), "b": list(-x)}, _loss, interval=5)
    got = [tracker.maybe_update(step) for step in range(1, 11)]
    assert [i + 1 for i, r in enumerate(got) if r is not None] == [5, 10]
    assert [h["step"] for h in tracker.summary()] == [5, 10]
    assert tracker.summary()[0]["conflict_ratio"] == 1.0
    assert tracker.log_record() == {"grad/conflict_ratio": 1.0, "grad/cos/a|b": -1.0}
    with pytest.raises(ValueError, match="interval"):
        GradientConflictTracker(Linear(), {"a": list(x), "b": list(x)}, _loss, interval=0)
    with pytest.raises(ValueError, match="at least two groups"):
        gradient_conflict(Linear(), {"a": list(x), "b": []}, _loss)
