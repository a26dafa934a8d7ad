"""Trainer: exact resume after a kill, atomic checkpoints, LR schedule, config loading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from audiomoe.config import ConfigError
from audiomoe.training import checkpoint as ckpt
from audiomoe.training.config import TrainConfig, load_train_config
from audiomoe.training.stream import BatchStream
from audiomoe.training.trainer import Trainer, build_optimizer, seed_everything, warmup_cosine


@dataclass
class ToyOutput:
    loss: torch.Tensor
    aux_loss: torch.Tensor


class ToyModel(nn.Module):
    """Regression MLP with dropout (so resume must restore the RNG) and a small aux loss; first layer frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> ToyOutput:
        hidden = self.net[0](self.frozen(x))
        pred = self.net[3](self.net[2](self.net[1](hidden))).squeeze(-1)
        aux = 1e-3 * hidden.pow(2).mean()
        return ToyOutput(loss=nn.functional.mse_loss(pred, y) + aux, aux_loss=aux)


DATA_X = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
DATA_Y = DATA_X @ torch.arange(1.0, 7.0) / 10


def toy_stream(batch_size: int = 4) -> BatchStream:
    def plan(epoch: int) -> list[list[int]]:
        order = torch.randperm(len(DATA_X), generator=torch.Generator().manual_seed(100 + epoch)).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    return BatchStream(plan, lambda idx: {"x": DATA_X[list(idx)], "y": DATA_Y[list(idx)]})


def make_config(out: Path, **kw) -> TrainConfig:
    base = {"out_dir": str(out), "steps": 16, "grad_accum": 2, "progress": False, "checkpoint_every": 4}
    base.update(kw)
    return load_train_config(None, [f"{k}={v}" for k, v in base.items()] + ["schedule.warmup_steps=3"])


def build(config: TrainConfig, stream: BatchStream | None = None) -> Trainer:
    seed_everything(config.seed)
    return Trainer(config, ToyModel(), stream or toy_stream(), evaluate=lambda m: {"dev_mse": 0.5})


def train_losses(run: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["aux_loss"], r["lr"]) for r in rows if "loss" in r]


class Killed(RuntimeError):
    pass


def test_resume_after_kill_is_exact(tmp_path: Path) -> None:
    full = tmp_path / "full"
    build(make_config(full)).fit()
    reference = train_losses(full)
    assert [r[0] for r in reference] == list(range(1, 17))
    assert reference[-1][1] < reference[0][1]  # it learns

    # Same run killed in the middle of step 11 (after the step-8 checkpoint, with steps 9-10 already logged).
    killed = tmp_path / "killed"
    stream = toy_stream()
    collate = stream.collate
    calls = {"n": 0}

    def dying_collate(idx):
        calls["n"] += 1
        if calls["n"] == 21:  # 2 micro-batches per step: the 21st is the first of step 11
            raise Killed
        return collate(idx)

    stream.collate = dying_collate
    with pytest.raises(Killed):
        build(make_config(killed), stream).fit()
    assert [s for s, _ in ckpt.list_checkpoints(killed / "checkpoints")] == [4, 8]

    with pytest.raises(FileExistsError, match="--resume"):
        build(make_config(killed)).fit()
    result = build(make_config(killed)).fit(resume=True)
    assert result.step == 16
    assert train_losses(killed) == reference  # bit-identical loss, aux and lr at every step
    assert (killed / "config.yaml").is_file()
    # keep_last=2 (default) prunes older checkpoints
    assert [s for s, _ in ckpt.list_checkpoints(killed / "checkpoints")] == [12, 16]


def test_checkpoint_is_never_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, steps=4, checkpoint_every=0)
    trainer = build(config)
    trainer.fit()
    root = tmp_path / "checkpoints"
    good = ckpt.latest_checkpoint(root)
    assert good is not None and good.name == "step_0000004"
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def crash_midway(tensors, path):
        path.write_bytes(b"partial safetensors bytes")  # the disk filled up half way through
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, "save_tensors", crash_midway)
    trainer.step = 5
    with pytest.raises(ckpt.StorageError, match="No space"):
        trainer.save_checkpoint()
    # Only the complete checkpoint is visible, untouched; the partial one's temp dir is removed (a full disk
    # must not stay full).
    assert [p for _, p in ckpt.list_checkpoints(root)] == [good]
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not (root / "step_0000005").exists()
    assert not (root / ".tmp-step_0000005").exists()
    monkeypatch.undo()
    trainer.save_checkpoint()  # a retry succeeds
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 5]
    assert not (root / ".tmp-step_0000005").exists()
    # Loading never unpickles: the trainer state loads with weights_only=True.
    state = ckpt.load_object(root / "step_0000005" / ckpt.TRAINER_FILE)
    assert state["step"] == 5 and state["stream"]["position"] > 0


def test_frozen_weights_are_not_checkpointed(tmp_path: Path) -> None:
    build(make_config(tmp_path, steps=2)).fit()
    names = set(ckpt.load_tensors(ckpt.latest_checkpoint(tmp_path / "checkpoints") / ckpt.MODEL_FILE))
    assert names == {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}


def test_dev_eval_and_metrics_records(tmp_path: Path) -> None:
    build(make_config(tmp_path, steps=4, eval_every=2, grad_accum=1)).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in rows if r.get("split") == "dev"]
    assert [r["step"] for r in dev] == [2, 4] and dev[0]["dev_mse"] == 0.5
    train = [r for r in rows if "loss" in r]
    assert {"step", "loss", "aux_loss", "lr", "grad_norm", "frames_per_s"} <= set(train[0])


def test_warmup_cosine_schedule() -> None:
    values = [warmup_cosine(s, 100, 10, 0.1) for s in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # monotone decay after warmup


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="grad_accum"):
        load_train_config(None, ["grad_accum=0"])
    with pytest.raises(ConfigError, match="precision"):
        load_train_config(None, ["precision=fp8"])
    cfg = load_train_config(None, ["optim.lr=1e-3", "optim.betas=[0.9, 0.99]"])
    assert cfg.optim.lr == 1e-3 and tuple(cfg.optim.betas) == (0.9, 0.99)


def test_optimizer_auto_takes_fused_adamw_and_follows_the_for_loop(tmp_path: Path) -> None:
    """optim.implementation=auto runs torch's fused AdamW on plain CPU tensors; its weights follow the for-loop
    implementation's within float32 rounding, foreach equals the for-loop bit for bit, and a bad name is one line."""
    weights = {}
    for name in ("auto", "for_loop", "foreach"):
        trainer = build(make_config(tmp_path / name, **{"optim.implementation": name, "optim.lr": 0.05}))
        expected = "fused" if name == "auto" else name
        assert trainer.optimizer.audiomoe_implementation == expected
        group = trainer.optimizer.param_groups[0]
        assert bool(group["fused"]) == (expected == "fused")
        assert bool(group["foreach"]) == (expected == "foreach")
        trainer.fit()
        weights[name] = torch.cat([p.detach().flatten() for p in trainer.model.net.parameters()])
    assert torch.equal(weights["foreach"], weights["for_loop"])
    # another kernel, or the closeness below would show nothing
    assert not torch.equal(weights["auto"], weights["for_loop"])
    torch.testing.assert_close(weights["auto"], weights["for_loop"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="optim.implementation"):
        load_train_config(None, ["optim.implementation=apex"])
    # fused forced where torch has no fused kernel: one line at build time, not a traceback at the first step
    with pytest.raises(ConfigError, match="optim.implementation=fused needs"):
        build_optimizer(
            nn.Linear(2, 2, device="meta"),
            make_config(tmp_path / "meta", **{"optim.implementation": "fused"}),
        )


def test_a_checkpoint_from_before_optim_implementation_resumes_under_auto() -> None:
    """An older fingerprint has no optim.implementation: auto (the default) resumes it, a forced one is a change."""
    from audiomoe.training.fingerprint import ResumeMismatch, check_resume, config_fingerprint

    current = config_fingerprint(load_train_config(None, []))
    older = {k: v for k, v in current.items() if k != "optim.implementation"}
    assert current["optim.implementation"] == "auto"
    assert check_resume(older, current, [], "step_4") == {}
    forced = config_fingerprint(load_train_config(None, ["optim.implementation=for_loop"]))
    with pytest.raises(ResumeMismatch, match="optim.implementation"):
        check_resume(older, forced, [], "step_4")
