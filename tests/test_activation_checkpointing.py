"""Activation checkpointing: the same gradients as without it (tiny LALM, fp32), refused where impossible."""

from __future__ import annotations

import pytest
import torch

from audiomoe.benchmarks.activation_memory import run_benchmark, saved_bytes, synthetic_batch
from audiomoe.config import ConfigError
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.activation_checkpointing import apply_activation_checkpointing
from audiomoe.training.config import load_train_config


def _model(**freeze: bool) -> AudioLanguageModel:
    config = build_preset("tiny", "moe", freeze={"encoder": False, "adapter": False, "llm": False, **freeze})
    return AudioLanguageModel(config).float()


def _grads(model: AudioLanguageModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(1)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_equal_with_and_without_checkpointing() -> None:
    plain, checkpointed = _model(), _model()
    checkpointed.load_state_dict(plain.state_dict())
    how = apply_activation_checkpointing(checkpointed)
    assert how == {"llm": "transformers", "encoder": "transformers"}
    batch = synthetic_batch(plain)
    want, got = _grads(plain, batch), _grads(checkpointed, batch)
    assert want.keys() == got.keys() and any(n.startswith("encoder.") for n in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    # and it really checkpointed: far fewer bytes are kept for the backward (46 MB -> 13 MB when written)
    assert saved_bytes(checkpointed, batch)[0] < 0.5 * saved_bytes(plain, batch)[0]


def test_frozen_encoder_is_left_alone_and_all_frozen_is_refused() -> None:
    assert apply_activation_checkpointing(_model(encoder=True)) == {
        "llm": "transformers",
        "encoder": "frozen: nothing to checkpoint",
    }
    with pytest.raises(ConfigError, match="neither the LLM nor the encoder has a trainable parameter"):
        apply_activation_checkpointing(_model(encoder=True, llm=True))
    with pytest.raises(ConfigError, match="no `llm` or `encoder` module"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2))


def test_non_transformers_module_uses_torch_checkpoint() -> None:
    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    model = Wrapper()
    x = torch.randn(3, 4)
    model.llm(x).sum().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert apply_activation_checkpointing(model) == {"llm": "torch.utils.checkpoint"}
    model.train()
    model.llm(x).sum().backward()
    for g, w in zip([p.grad for p in model.parameters()], want, strict=True):
        torch.testing.assert_close(g, w)


def test_train_prefixed_override_is_accepted() -> None:
    assert load_train_config(None, ["train.activation_checkpointing=true"]).activation_checkpointing
    assert not load_train_config(None, []).activation_checkpointing


def test_memory_benchmark_reports_both_arms_on_the_same_step() -> None:
    result = run_benchmark(batch_size=1, seconds=2.0, device="cpu")
    assert result["with"]["checkpointing"] == {"llm": "transformers", "encoder": "transformers"}
    assert result["without"]["loss"] == pytest.approx(result["with"]["loss"], rel=1e-6)
    assert 0 < result["saved_ratio"] < 0.5 and result["with"]["peak_mb"] is None
