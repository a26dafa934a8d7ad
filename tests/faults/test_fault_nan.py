"""NaN injection into the training loop (``nan_policy``), non-finite weights at save time, and a dev evaluation
that fails after the final checkpoint was written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TALLY

from audiomoe.training import checkpoint as ckpt
from audiomoe.training.run import finite_json
from audiomoe.training.trainer import NonFiniteTraining, Trainer
from test_train import build, make_config, toy_stream


def poisoned_stream(bad_calls: set[int] | None = None, from_call: int | None = None):
    """The toy stream with NaN inputs on the given collate calls (1-based), or on every call from ``from_call``."""
    stream = toy_stream()
    collate, calls = stream.collate, {"n": 0}

    def collate_with_nan(indices):
        calls["n"] += 1
        batch = collate(indices)
        if calls["n"] in (bad_calls or set()) or (from_call is not None and calls["n"] >= from_call):
            batch = {**batch, "x": torch.full_like(batch["x"], float("nan"))}
        return batch

    stream.collate = collate_with_nan
    return stream


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def count(kind: str = "ok") -> None:
    TALLY["cases"] += 1
    TALLY[kind] += 1


def test_a_nan_batch_is_skipped_and_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path, steps=8, grad_accum=1)
    result = build(config, poisoned_stream({5})).fit()
    assert result.step == 8 and result.non_finite_steps == 1
    logged = rows(tmp_path)
    assert [r["step"] for r in logged if "lr" in r] == list(range(1, 9))  # 8 real updates
    (skip,) = [r for r in logged if r.get("split") == "non_finite"]
    assert skip["step"] == 4 and skip["loss"] is None and skip["non_finite_steps"] == 1  # valid JSON: null
    final = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert (
        ckpt.verify_checkpoint(final) and ckpt.load_object(final / ckpt.TRAINER_FILE)["non_finite_steps"] == 1
    )
    count()


def test_nan_policy_stop_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    config = make_config(tmp_path, steps=8, grad_accum=1, nan_policy="stop")
    with pytest.raises(NonFiniteTraining, match=r"step 6: .*last good checkpoint .*step_0000004 is intact"):
        build(config, poisoned_stream({6})).fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [4]
    assert ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step_0000004")
    count("clear error")


def test_consecutive_nans_stop_after_nan_patience(tmp_path: Path) -> None:
    config = make_config(tmp_path, steps=8, grad_accum=1, nan_patience=3)
    with pytest.raises(NonFiniteTraining, match=r"3 step\(s\) in a row at step 3"):
        build(config, poisoned_stream(from_call=3)).fit()
    assert [r["non_finite_steps"] for r in rows(tmp_path) if r.get("split") == "non_finite"] == [1, 2, 3]
    count("clear error")


def test_nan_policy_raise_raises_at_the_first(tmp_path: Path) -> None:
    config = make_config(tmp_path, steps=8, grad_accum=1, nan_policy="raise")
    with pytest.raises(FloatingPointError, match="step 2"):
        build(config, poisoned_stream({2})).fit()
    count()


def test_checkpoints_refuse_non_finite_weights(tmp_path: Path) -> None:
    trainer = build(make_config(tmp_path, steps=2, grad_accum=1))
    trainer.fit()
    with torch.no_grad():
        next(p for p in trainer.model.parameters() if p.requires_grad).view(-1)[0] = float("inf")
    trainer.step = 3
    with pytest.raises(ckpt.CheckpointError, match="non-finite weights"):
        trainer.save_checkpoint()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2]
    assert not (tmp_path / "checkpoints" / ".tmp-step_0000003").exists()
    count("clear error")


def test_a_failing_final_dev_eval_comes_after_the_final_save(tmp_path: Path) -> None:
    def broken_eval(model):
        raise ValueError("dev.jsonl:3: clip.wav: cannot decode")

    seed_config = make_config(tmp_path, steps=4, grad_accum=1)
    from test_train import ToyModel

    result = Trainer(seed_config, ToyModel(), toy_stream(), evaluate=broken_eval).fit()
    assert result.step == 4 and "dev.jsonl:3" in result.eval_error
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")][-1] == 4
    assert rows(tmp_path)[-1] == {"step": 4, "split": "dev", "error": result.eval_error}
    count()


def test_summary_values_are_always_valid_json() -> None:
    summary = finite_json({"final_loss": float("nan"), "x": [float("inf"), 1.0], "y": {"z": -float("inf")}})
    assert json.loads(json.dumps(summary, allow_nan=False)) == {
        "final_loss": None,
        "x": [None, 1.0],
        "y": {"z": None},
    }
    count()


def test_a_skipped_step_under_a_grad_scaler_keeps_training(tmp_path: Path) -> None:
    """fp16 runs (GPU) scale the loss: a skipped step must close the scaler's iteration, or the next unscale_
    fails. The scaler's logic is device-independent, so it is exercised here on the CPU."""
    trainer = build(make_config(tmp_path, steps=6, grad_accum=1), poisoned_stream({3}))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    result = trainer.fit()
    assert result.step == 6 and result.non_finite_steps == 1
    assert trainer.scaler.get_scale() == 2.0**7  # the non-finite step halved the scale
    count()
