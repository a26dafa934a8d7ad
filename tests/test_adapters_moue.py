"""The MoUE-style adapter: topology, the per-block-MoE degenerate case, balance losses, parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from audiomoe.adapters import build_adapter
from audiomoe.adapters.moe import MoEAdapterConfig, MoELayer, RoutingResult
from audiomoe.adapters.moue import MoUEAdapter, moue_preset, window_mask
from audiomoe.cli.main import main as cli_main
from audiomoe.config import ConfigError


def moue(**fields) -> MoUEAdapter:
    cfg = {"type": "moue", "input_dim": 12, "output_dim": 16, "downsample_factor": 2, "expert_hidden_dim": 8}
    return build_adapter({**cfg, **fields}).eval()


def test_staggered_windows_wrap_around_and_count_exposure():
    mask = window_mask(num_blocks=3, pool_size=6, window=4, stride=2)
    assert [row.nonzero().flatten().tolist() for row in mask] == [[0, 1, 2, 3], [2, 3, 4, 5], [0, 1, 4, 5]]
    two = moue(num_blocks=2, pool_size=6, window=4, stride=2)
    assert two.exposure().tolist() == [1, 1, 2, 2, 1, 1]
    assert two.routing_summary() == {"pool_size": 6, "virtual_width": 8, "routing_paths": 36}


def test_per_block_preset_equals_a_stack_of_moe_layers_with_the_same_experts():
    torch.manual_seed(0)
    adapter = moue(**moue_preset("per_block", num_blocks=3, experts_per_block=4), top_k=2)
    with torch.no_grad():
        adapter.depth.normal_()  # a nonzero depth embedding, so the reference must add it too
    x = torch.randn(10, 16)
    got, routings, _ = adapter.blocks(x)
    ref = x
    for block in range(3):
        layer = MoELayer(
            MoEAdapterConfig(num_experts=4, top_k=2, expert_hidden_dim=8, num_shared_experts=0), 16, 16
        )
        own = slice(4 * block, 4 * block + 4)
        with torch.no_grad():
            layer.gate.weight.copy_(adapter.router[block, own])
            for name, param in layer.experts.named_parameters():
                param.copy_(getattr(adapter.experts, name)[own])
        h = adapter.norms[block](ref) + adapter.depth[block]
        out = layer(h)
        assert torch.equal(routings[block].indices, out.routing.indices + 4 * block)
        ref = ref + out.out
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_routing_stays_inside_each_window_and_padding_enters_no_count():
    torch.manual_seed(1)
    adapter = moue(num_blocks=2, pool_size=6, window=3, stride=2, top_k=2, universal_router=True)
    feats, mask = torch.randn(2, 8, 12), torch.ones(2, 8, dtype=torch.bool)
    mask[1, 3:] = False
    out = adapter(feats, mask)
    _, routings, _ = adapter.blocks(adapter.proj_in(adapter.front(feats, mask)[0][out.mask]))
    for block, routing in enumerate(routings):
        assert adapter.windows[block][routing.indices].all()
        assert torch.allclose(routing.probs[:, ~adapter.windows[block]], torch.zeros(()))
    valid = int(out.mask.sum())  # 4 + 2 downsampled tokens
    assert valid == 6 and int(out.tokens_per_expert.sum()) == 2 * 2 * valid


def _routing(indices: list[list[int]], probs: list[list[float]]) -> RoutingResult:
    idx, p = torch.tensor(indices), torch.tensor(probs)
    return RoutingResult(indices=idx, weights=torch.full(idx.shape, 0.5), logits=p.log(), probs=p)


@pytest.mark.parametrize("balance", ["per_layer", "pool", "pool_exposure"])
def test_balance_losses_are_one_at_their_target(balance):
    # 2 blocks over 4 experts, windows {0,1,2} and {2,3,0}: exposure [2, 1, 2, 1]
    adapter = moue(num_blocks=2, pool_size=4, window=3, stride=2, top_k=1, balance=balance)
    if balance == "per_layer":  # uniform inside each window
        blocks = [_routing([[0], [1], [2]], [[1 / 3, 1 / 3, 1 / 3, 0]] * 3),
                  _routing([[2], [3], [0]], [[1 / 3, 0, 1 / 3, 1 / 3]] * 3)]  # fmt: skip
    elif balance == "pool":  # pool-uniform on average over the blocks
        blocks = [
            _routing([[0], [1]], [[0.25, 0.5, 0.25, 0]] * 2),
            _routing([[2], [3]], [[0.25, 0, 0.25, 0.5]] * 2),
        ]
    else:  # load proportional to exposure: [1/3, 1/6, 1/3, 1/6]
        blocks = [_routing([[0], [0], [1], [2], [2], [3]], [[1 / 3, 1 / 6, 1 / 3, 1 / 6]] * 6)] * 2
    assert adapter.balance_loss(blocks).item() == pytest.approx(1.0)
    skewed = [_routing([[0]] * 3, [[0.9, 0.05, 0.05, 0]] * 3)] * 2
    assert adapter.balance_loss(skewed).item() > 1.5


def test_presets_match_parameters_and_reach_every_expert():
    counts = {}
    for kind in ("per_block", "staggered", "shared"):
        adapter = moue(**moue_preset(kind, num_blocks=4, experts_per_block=2), top_k=1)
        counts[kind] = (adapter.param_counts(), adapter.routing_summary(), adapter.exposure().tolist())
    assert (
        len({c.total for c, _, _ in counts.values()}) == 1
        and len({c.active for c, _, _ in counts.values()}) == 1
    )
    assert (
        counts["per_block"][2] == [1] * 8
        and counts["staggered"][2] == [2] * 8
        and counts["shared"][2] == [4] * 8
    )
    paths = [counts[k][1]["routing_paths"] for k in ("per_block", "staggered", "shared")]
    assert paths == [2**4, 4**4, 8**4]  # C(W, 1)^L: virtual width grows at fixed active compute


def test_bad_topology_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="adapter.stride"):
        moue(pool_size=8, window=4, stride=5)
    with pytest.raises(ConfigError, match="num_blocks must be >= 2"):
        moue(num_blocks=1)


def test_params_cli_prints_virtual_width(tmp_path, capsys):
    config = tmp_path / "a.yaml"
    config.write_text(
        "adapter: {type: moue, input_dim: 12, output_dim: 16, pool_size: 8, window: 4, stride: 2}\n"
    )
    assert (
        cli_main(
            ["params", "--config", str(config), "expert_hidden_dim=8", "--json", str(tmp_path / "c.json")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "total" in out and "active" in out and "virtual width 8" in out and "routing paths 36" in out
    assert json.loads((tmp_path / "c.json").read_text())["pool_size"] == 8
