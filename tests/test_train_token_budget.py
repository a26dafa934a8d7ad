"""Gradient accumulation by token budget (``tokens_per_step``): a step takes batches until their supervised tokens
reach the budget, and its gradient is that of the token-mean loss over them, however the tokens fell into batches."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from audiomoe.config import ConfigError
from audiomoe.training.config import load_train_config
from audiomoe.training.stream import BatchStream
from audiomoe.training.trainer import Trainer, seed_everything, supervised_tokens

X = torch.randn(24, 5, generator=torch.Generator().manual_seed(3))
Y = torch.cos(X).sum(-1)
# the batches of an epoch, in order: 4 rows each; the labels mask says which rows count (the "tokens")
BATCHES = [list(range(i, i + 4)) for i in range(0, 24, 4)]
VALID = torch.tensor(
    [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool
)
# valid tokens per batch: 1, 4, 2, 3, 1, 4


@dataclass
class Out:
    loss: torch.Tensor
    aux_loss: torch.Tensor


class Masked(nn.Module):
    """Mean squared error over the rows whose label is not -100 (a token-mean loss, as an LM's)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> Out:
        keep = labels != -100
        pred = self.net(x).squeeze(-1)
        return Out(nn.functional.mse_loss(pred[keep], y[keep]), pred.new_zeros(()))


def collate(indices: list[int]) -> dict[str, torch.Tensor]:
    idx = torch.tensor(indices)
    return {"x": X[idx], "y": Y[idx], "labels": torch.where(VALID[idx], 0, -100)}


def run(tmp_path: Path, *overrides: str) -> tuple[Masked, list[dict]]:
    config = load_train_config(
        None,
        [
            f"out_dir={tmp_path}",
            "steps=2",
            "progress=false",
            "precision=fp32",
            "optim.clip_norm=0",
            *overrides,
        ],
    )
    seed_everything(0)
    model = Masked()
    start = copy.deepcopy(model)
    Trainer(config, model, BatchStream(lambda epoch: BATCHES, collate)).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return start, [r for r in rows if "loss" in r]


def test_a_step_takes_batches_until_the_budget_and_weighs_them_by_tokens(tmp_path: Path) -> None:
    start, rows = run(tmp_path, "tokens_per_step=5")
    # step 1: batches 0, 1 (1 + 4 = 5 tokens); step 2: batches 2, 3 (2 + 3 = 5)
    assert [(r["micro_batches"], r["tokens"]) for r in rows] == [(2, 5), (2, 5)]
    # the gradient of step 1 is that of the mean over its 5 tokens, not the mean of the two batch means
    batch = collate(BATCHES[0] + BATCHES[1])
    loss = start(**batch).loss
    loss.backward()
    expected_norm = torch.cat([p.grad.flatten() for p in start.parameters()]).norm()
    assert rows[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert rows[0]["grad_norm"] == pytest.approx(expected_norm.item(), rel=1e-5)
    batch_means = [start(**collate(b)).loss.item() for b in BATCHES[:2]]
    assert abs(sum(batch_means) / 2 - loss.item()) > 1e-3  # the two weightings differ here: the test can tell


def test_a_batch_over_the_budget_is_a_step_of_its_own(tmp_path: Path) -> None:
    _, rows = run(tmp_path, "tokens_per_step=1")
    assert [(r["micro_batches"], r["tokens"]) for r in rows] == [(1, 1), (1, 4)]


def test_supervised_tokens_count_labels_or_rows() -> None:
    assert supervised_tokens(collate(BATCHES[1])) == 4
    assert supervised_tokens({"x": torch.zeros(7, 2)}) == 7


def test_a_token_budget_and_grad_accum_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokens_per_step=5 and grad_accum=2 both set"):
        load_train_config(None, [f"out_dir={tmp_path}", "tokens_per_step=5", "grad_accum=2"])
