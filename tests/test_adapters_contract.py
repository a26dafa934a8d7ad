"""The adapter contract for every registered adapter, the fronts, presets, parameter matching, configs."""

from __future__ import annotations

import json

import pytest
import torch

from audiomoe.adapters import ADAPTERS, build_adapter
from audiomoe.adapters.front import DownsampleFront
from audiomoe.adapters.presets import count_parameters, matched_moe_config, preset_config
from audiomoe.cli.main import main as cli_main
from audiomoe.config import ConfigError, apply_overrides, load_config

SMALL = {
    "linear": {},
    "mlp": {"hidden_dim": 40},
    "conv": {"hidden_dim": 40},
    "qformer": {"window": 3, "num_queries": 2, "hidden_dim": 16, "num_heads": 2, "num_layers": 1},
    "moe": {"expert_hidden_dim": 16, "num_experts": 4, "top_k": 2},
    "moue": {"expert_hidden_dim": 16, "pool_size": 6, "window": 4, "stride": 2, "top_k": 2, "num_blocks": 3},
}


def make(name: str, factor: int = 3) -> torch.nn.Module:
    cfg = {"type": name, "input_dim": 12, "output_dim": 20, **SMALL[name]}
    if name != "qformer":
        cfg["downsample_factor"] = factor
    return build_adapter(cfg).eval()


def test_every_registered_adapter_has_a_small_config_here():
    assert set(ADAPTERS) <= set(SMALL), "add the new adapter to SMALL so the contract tests cover it"


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("lengths", [[1], [7, 1], [9, 4, 5], [1, 1]])
def test_shape_contract_for_odd_lengths_and_length_one(name, lengths):
    torch.manual_seed(0)
    adapter = make(name)
    t = max(lengths)
    x = torch.randn(len(lengths), t, 12)
    lens = torch.tensor(lengths)
    mask = torch.arange(t)[None] < lens[:, None]
    out = adapter(x, mask)
    expected = adapter.output_lengths(lens)
    assert out.embeds.shape == (len(lengths), int(expected.max()), 20)
    assert torch.equal(out.mask.sum(-1), expected)
    assert torch.isfinite(out.embeds).all()
    assert (out.embeds[~out.mask] == 0).all()
    assert out.aux_loss.dim() == 0
    # each sample alone gives the same valid outputs as in the padded batch
    for i, n in enumerate(lengths):
        alone = adapter(x[i : i + 1, :n])
        torch.testing.assert_close(alone.embeds[0], out.embeds[i, : int(expected[i])], atol=1e-5, rtol=1e-4)
    if name == "moe":
        assert out.router_logits.shape[:2] == out.mask.shape and out.tokens_per_expert.numel() == 4
        assert int(out.tokens_per_expert.sum()) == 2 * int(out.mask.sum())
    elif name == "moue":  # load summed over the 3 blocks of a 6-expert pool
        assert out.router_logits.shape[:2] == out.mask.shape and out.tokens_per_expert.numel() == 6
        assert int(out.tokens_per_expert.sum()) == 3 * 2 * int(out.mask.sum())
    else:
        assert out.router_logits is None and out.tokens_per_expert.numel() == 0


@pytest.mark.parametrize("kind", ["stack", "avgpool", "conv"])
def test_front_kinds(kind):
    front = DownsampleFront(kind, 4, 6)
    x = torch.arange(2 * 10 * 6, dtype=torch.float32).reshape(2, 10, 6)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    y, m = front(x, mask)
    assert y.shape == (2, 3, 24 if kind == "stack" else 6) and m.sum(-1).tolist() == [3, 2]
    if kind == "stack":
        torch.testing.assert_close(y[0, 0], x[0, :4].reshape(-1))
        assert (y[1, 1, 12:] == 0).all()  # frames 6, 7 of sample 1 are padding
    if kind == "avgpool":
        torch.testing.assert_close(y[1, 1], x[1, 4:6].mean(0))  # mean over valid frames only


def test_paper_presets_land_on_the_reported_budget():
    moe = count_parameters(preset_config("paper-2601.02967"))
    dense = count_parameters(preset_config("paper-2601.02967-dense"))
    assert moe["total_params"] == pytest.approx(94.4e6, rel=0.005)
    assert moe["active_params"] == pytest.approx(70.8e6, rel=0.005)
    assert dense["total_params"] == pytest.approx(94.4e6, rel=0.005)
    assert dense["active_params"] == dense["total_params"]


def test_params_cli_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli_main(["params", "--preset", "paper-2601.02967", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["total_params"] == pytest.approx(94.4e6, rel=0.005)
    assert data["active_params"] == pytest.approx(70.8e6, rel=0.005)
    assert "active 70.8" in capsys.readouterr().out


@pytest.mark.parametrize(
    "dense",
    [
        {"type": "mlp", "input_dim": 384, "output_dim": 256, "hidden_dim": 1024},
        {"type": "linear", "input_dim": 512, "output_dim": 896, "downsample_factor": 4},
        {
            "type": "mlp",
            "input_dim": 2560,
            "output_dim": 2048,
            "hidden_dim": 20480,
            "mlp_type": "ffn",
            "downsample": "none",
            "downsample_factor": 1,
        },
    ],
)
@pytest.mark.parametrize(("experts", "k", "shared"), [(8, 2, 1), (8, 4, 0), (16, 4, 2)])
def test_matched_moe_config_matches_active_parameters(dense, experts, k, shared):
    cfg = matched_moe_config(dense, num_experts=experts, top_k=k, num_shared=shared)
    target = count_parameters(dense)["active_params"]
    got = count_parameters(cfg)
    assert abs(got["active_params"] - target) <= 0.02 * target
    assert got["total_params"] > got["active_params"]
    assert cfg.num_experts == experts and cfg.top_k == k


def test_matched_moe_config_refuses_impossible_match():
    with pytest.raises(ValueError, match="cannot match"):
        matched_moe_config(
            {"type": "linear", "input_dim": 4, "output_dim": 4, "downsample": "none", "downsample_factor": 1},
            num_experts=64,
            top_k=2,
        )


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"type": "nope"}, "unknown"),
        ({"type": "linear", "input_dim": 0}, "input_dim"),
        ({"type": "linear", "downsample": "none", "downsample_factor": 2}, "downsample"),
        ({"type": "linear", "downsample": "maxpool"}, "downsample"),
        ({"type": "qformer", "hidden_dim": 30, "num_heads": 4}, "divisible"),
        ({"type": "mlp", "input_dim": "wide"}, "integer"),
    ],
)
def test_bad_adapter_configs(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_adapter(cfg)


def test_wrong_feature_width_is_a_clear_error():
    adapter = make("linear")
    with pytest.raises(ValueError, match="expects 12-dim features"):
        adapter(torch.randn(1, 5, 13))


def test_yaml_config_with_overrides(tmp_path):
    from audiomoe.adapters.moe import MoEAdapterConfig

    path = tmp_path / "a.yaml"
    path.write_text("input_dim: 64\noutput_dim: 32\nnum_experts: 4\n")
    cfg = load_config(MoEAdapterConfig, path, ["top_k=3", "router=top_p", "top_p=0.5"])
    assert (cfg.input_dim, cfg.num_experts, cfg.top_k, cfg.router, cfg.top_p) == (64, 4, 3, "top_p", 0.5)
    with pytest.raises(ConfigError, match="top_k"):
        load_config(MoEAdapterConfig, path, ["top_k=9"])
    with pytest.raises(
        ConfigError, match=r"^override 'topk=2' \(command line\): no key 'topk' .*did you mean 'top_k'"
    ):
        load_config(MoEAdapterConfig, path, ["topk=2"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


def test_paper_dense_twin_with_fusion_front_matches_moe_total():
    """The paper's twins share the 5120 -> 2560 fusion front; the dense FFN then has the MoE's total parameters."""
    front = {
        "input_dim": 1280,
        "output_dim": 2048,
        "downsample": "stack",
        "downsample_factor": 4,
        "fuse_dim": 2560,
    }
    moe = count_parameters({**preset_config("paper-2601.02967").__dict__, **front})
    dense = count_parameters({**preset_config("paper-2601.02967-dense").__dict__, **front})
    fusion = 5120 * 2 + 5120 * 2560 + 2560 + 2560 * 2
    assert moe["total_params"] == pytest.approx(94.4e6 + fusion, rel=0.005)
    assert dense["total_params"] == pytest.approx(moe["total_params"], rel=0.005)
