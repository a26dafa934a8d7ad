"""Activation checkpointing: the same gradients as without it (tiny LALM, fp32), refused where impossible."""

from __future__ import annotations

import pytest
import torch

from audiomoe.config import ConfigError
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.activation_checkpointing import apply_activation_checkpointing
from audiomoe.training.config import load_train_config


def _model(**freeze: bool) -> AudioLanguageModel:
    config = build_preset("tiny", "moe", freeze={"encoder": False, "adapter": False, "llm": False, **freeze})
    return AudioLanguageModel(config).float()


def _batch(model: AudioLanguageModel) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_mels = model.encoder.n_mels
    frames = 200
    n_audio = int(model.audio_token_lengths(torch.tensor([frames]))[0])
    ids = torch.randint(3, 200, (2, n_audio + 8), generator=g)
    ids[ids == model.audio_token_id] = 3
    ids[:, :n_audio] = model.audio_token_id
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.where(ids == model.audio_token_id, -100, ids),
        "audio_features": torch.randn(2, n_mels, model.encoder.window, generator=g),
        "audio_lengths": torch.tensor([frames] * 2),
    }


def _grads(model: AudioLanguageModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(1)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model: AudioLanguageModel, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward outside checkpointed regions, over one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return total


def test_gradients_equal_with_and_without_checkpointing() -> None:
    plain, checkpointed = _model(), _model()
    checkpointed.load_state_dict(plain.state_dict())
    how = apply_activation_checkpointing(checkpointed)
    assert how == {"llm": "transformers", "encoder": "transformers"}
    batch = _batch(plain)
    want, got = _grads(plain, batch), _grads(checkpointed, batch)
    assert want.keys() == got.keys() and any(n.startswith("encoder.") for n in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    # and it really checkpointed: far fewer bytes are kept for the backward (46 MB -> 13 MB when written)
    assert saved_bytes(checkpointed, batch) < 0.5 * saved_bytes(plain, batch)


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
