"""Conversions start function-preserving: dense -> MoE upcycling and per-block MoE -> MoUE-style widening, for
the adapter alone and through ``audiomoe upcycle`` on a saved tiny LALM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audiomoe.adapters import build_adapter
from audiomoe.adapters.convert import dense_to_moe, widen_moue
from audiomoe.adapters.moue import moue_preset
from audiomoe.cli.main import main as cli
from audiomoe.config import ConfigError
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.upcycle import adapter_difference


@pytest.mark.parametrize("mlp_type", ["swiglu", "ffn"])
def test_dense_to_moe_equals_the_dense_adapter_and_breaks_symmetry_in_training(mlp_type):
    torch.manual_seed(0)
    dense = build_adapter({"type": "mlp", "input_dim": 12, "output_dim": 16, "hidden_dim": 24,
                           "mlp_type": mlp_type, "post_norm": mlp_type == "ffn"})  # fmt: skip
    moe = dense_to_moe(dense, num_experts=4, top_k=2)
    assert adapter_difference(dense, moe) < 1e-6
    # a gradient step makes the copies differ: the router sends different tokens to different experts
    moe.train()
    out = moe(torch.randn(2, 40, 12))
    out.embeds.pow(2).sum().backward()
    grads = moe.moe.experts.down_proj.grad
    assert not torch.allclose(grads[0], grads[1])


def test_moue_widening_keeps_outputs_then_opens_the_new_reach():
    torch.manual_seed(0)
    per_block = build_adapter({"input_dim": 12, "output_dim": 16, "expert_hidden_dim": 8, "top_k": 2,
                               **moue_preset("per_block", num_blocks=3, experts_per_block=2)})  # fmt: skip
    wide = widen_moue(per_block, window=4, widen_steps=2)
    assert adapter_difference(per_block, wide) < 1e-6
    assert wide.windows.sum(1).tolist() == [4, 4, 4] and (wide.window_bias < 0).sum() == 3 * 2
    wide.train()
    for _ in range(2):
        wide(torch.randn(1, 8, 12))
    assert wide._bias_scale() == 0.0  # after widen_steps forwards the neighbours' experts are reachable
    with pytest.raises(ConfigError, match="stride = window"):
        widen_moue(wide, window=4)


def _batch(model: AudioLanguageModel) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    clips = [
        [rng.standard_normal(8000).astype(np.float32) * 0.1],
        [rng.standard_normal(5000).astype(np.float32)],
    ]
    return model.processor(["What is said?", "Which digit?"], clips, answers=["one", "two"])


@pytest.mark.parametrize(("adapter", "to"), [("mlp", "moe"), ("moue", "moue")])
def test_upcycle_cli_writes_a_model_with_the_source_outputs(tmp_path, capsys, adapter, to):
    fields = (
        {"adapter": {"expert_hidden_dim": 16, **moue_preset("per_block", 2, 2)}} if adapter == "moue" else {}
    )
    source = AudioLanguageModel(build_preset("tiny", adapter, **fields))
    source.save_pretrained(tmp_path / "src")
    assert cli(["upcycle", "--from", str(tmp_path / "src"), "--to", to, "--out", str(tmp_path / "out")]) == 0
    assert "max |output difference| at step 0" in capsys.readouterr().out
    converted = AudioLanguageModel.from_pretrained(tmp_path / "out")
    assert converted.config.adapter["type"] == to
    batch = _batch(source)
    with torch.no_grad():
        before, after = source(**batch), converted(**batch)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)
    assert after.lm_loss.item() == pytest.approx(before.lm_loss.item(), abs=1e-5)
    assert json.loads((tmp_path / "out" / "upcycle.json").read_text())["max_abs_diff"] < 1e-5


def test_upcycle_refuses_a_source_of_the_wrong_kind(tmp_path, capsys):
    AudioLanguageModel(build_preset("tiny", "linear")).save_pretrained(tmp_path / "src")
    assert cli(["upcycle", "--from", str(tmp_path / "src"), "--to", "moe", "--out", str(tmp_path / "o")]) == 2
    assert "needs an 'mlp' adapter" in capsys.readouterr().err
