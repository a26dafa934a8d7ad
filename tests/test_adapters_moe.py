"""MoE-Adapter: kernels, transformers interop, padding, balancing, gradients, routing rules."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2MoeConfig
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

from audiomoe.adapters import build_adapter
from audiomoe.adapters.kernels import loop_grouped_linear
from audiomoe.adapters.moe import MoEAdapterConfig, MoELayer, attach_router_bias_update, update_router_biases


def moe(**kw):
    base = dict(type="moe", input_dim=32, output_dim=48, expert_hidden_dim=16, downsample_factor=2)
    return build_adapter({**base, **kw})


def padded_batch(b=3, t=11, c=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    lengths = torch.tensor([t, 5, 1][:b])
    mask = torch.arange(t)[None] < lengths[:, None]
    return x, mask


@pytest.mark.parametrize("expert_type", ["swiglu", "ffn"])
def test_loop_and_grouped_mm_agree_forward_and_backward_with_empty_experts(expert_type):
    torch.manual_seed(0)
    ref = moe(expert_type=expert_type, kernel="loop", num_experts=8, top_k=2)
    fast = moe(expert_type=expert_type, kernel="grouped_mm", num_experts=8, top_k=2)
    fast.load_state_dict(ref.state_dict())
    # route everything to experts 0 and 1: the other six get no rows
    with torch.no_grad():
        for m in (ref, fast):
            m.moe.gate.weight.zero_()
            m.moe.gate.weight[0, 0] = m.moe.gate.weight[1, 1] = 50.0
    x, mask = padded_batch()
    x[..., 0] += 5.0
    x[..., 1] += 4.0
    outs, grads = [], []
    for m in (ref, fast):
        o = m(x, mask)
        assert (o.tokens_per_expert[2:] == 0).all() and o.tokens_per_expert[:2].sum() > 0
        (o.embeds.pow(2).sum() + o.aux_loss).backward()
        outs.append(o.embeds)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_grouped_mm_kernel_equals_loop_on_uneven_groups():
    torch.manual_seed(1)
    w = torch.randn(4, 24, 16, requires_grad=True)
    x = torch.randn(10, 16, requires_grad=True)
    counts = torch.tensor([3, 0, 7, 0])
    from audiomoe.adapters.kernels import grouped_mm_grouped_linear

    a = loop_grouped_linear(x, w, counts)
    b = grouped_mm_grouped_linear(x, w, counts)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.sum(), (x, w))
    gb = torch.autograd.grad(b.sum(), (x, w))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("kernel", ["loop", "grouped_mm"])
def test_from_hf_matches_qwen2_moe_block(norm_topk_prob, kernel):
    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(
        hidden_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
    )
    cfg._experts_implementation = "eager"
    block = Qwen2MoeSparseMoeBlock(cfg)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(3, 10, 64)
    ref = block(x)
    layer = MoELayer.from_hf(block, kernel=kernel)
    assert set(layer.state_dict()) == set(block.state_dict())
    out = layer(x.reshape(-1, 64)).out.reshape(3, 10, 64)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # the block's own (batch, time, hidden) input works as well, with the same shape out
    torch.testing.assert_close(layer(x).out, ref, atol=1e-5, rtol=1e-5)
    # and back: our weights load into a fresh transformers block
    block2 = Qwen2MoeSparseMoeBlock(cfg)
    block2.load_state_dict(layer.state_dict())
    torch.testing.assert_close(block2(x), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"expert_type": "ffn", "output_norm": True},
        {"router": "sigmoid"},
        {"router": "top_p", "top_k": 4, "top_p": 0.5},
        {"num_null_experts": 2, "top_k": 3},
        {"aggregation": "mlp", "mixture_dim": 40, "shared_expert_gate": True, "num_shared_experts": 2},
    ],
)
def test_padding_changes_no_valid_output_and_no_statistic(kw):
    torch.manual_seed(0)
    m = moe(**kw).train()
    x, mask = padded_batch()
    o1 = m(x, mask)
    x2 = x.clone()
    x2[~mask] = torch.randn_like(x2[~mask]) * 100  # garbage in padded frames
    x3 = torch.nn.functional.pad(x, (0, 0, 0, 6), value=7.0)  # extra padded frames
    mask3 = torch.nn.functional.pad(mask, (0, 6), value=False)
    for xx, mm in ((x2, mask), (x3, mask3)):
        o = m(xx, mm)
        t = o1.mask.shape[1]
        torch.testing.assert_close(o.embeds[:, :t][o1.mask], o1.embeds[o1.mask])
        assert torch.equal(o.mask[:, :t], o1.mask) and not o.mask[:, t:].any()
        assert torch.equal(o.tokens_per_expert, o1.tokens_per_expert)
        torch.testing.assert_close(o.aux_loss, o1.aux_loss)
        for name in o1.aux_losses:
            torch.testing.assert_close(o.aux_losses[name], o1.aux_losses[name])
        assert (o.embeds[~o.mask] == 0).all()
        assert (o.expert_indices[~o.mask] == -1).all()
    # one valid token routes to exactly top_k real experts (plain top-k)
    if not kw:
        assert int(o1.tokens_per_expert.sum()) == int(o1.mask.sum()) * 2


def _collapse(m, scale=8.0):
    """Make every token prefer experts 0 and 1 (inputs carry a shared offset direction)."""
    with torch.no_grad():
        m.moe.gate.weight[0, 0] = scale
        m.moe.gate.weight[1, 0] = scale * 0.9


def _max_over_mean(counts):
    counts = counts.float()
    return float(counts.max() / counts.mean())


def test_balance_loss_rebalances_a_collapsed_router():
    torch.manual_seed(0)
    m = moe(num_experts=8, top_k=2, load_balance_coef=1.0, downsample="none", downsample_factor=1)
    _collapse(m)
    x = torch.randn(4, 64, 32)
    x[..., 0] = x[..., 0].abs() + 1.0
    before = _max_over_mean(m(x).tokens_per_expert)
    assert before == pytest.approx(4.0)  # two of eight experts take every token
    opt = torch.optim.Adam(m.moe.gate.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        m(x).aux_loss.backward()
        opt.step()
    after = _max_over_mean(m(x).tokens_per_expert)
    assert after < 1.5, (before, after)


def test_aux_loss_free_bias_lowers_max_over_mean_load():
    torch.manual_seed(0)
    m = moe(
        router="sigmoid", bias_update_rate=0.02, load_balance_coef=0.0, downsample="none", downsample_factor=1
    )
    _collapse(m)
    x = torch.randn(4, 64, 32)
    x[..., 0] = x[..., 0].abs() + 1.0
    m.train()
    before = _max_over_mean(m(x).tokens_per_expert)
    update_router_biases(m)  # the first call consumes the load of the forward above
    for _ in range(300):
        m(x)
        update_router_biases(m)
    after = _max_over_mean(m(x).tokens_per_expert)
    assert before > 3.0 and after < 1.6, (before, after)
    # the bias is not a parameter: the optimizer never sees it, the state dict keeps it
    assert "moe.gate.e_score_correction_bias" in m.state_dict()
    assert all("correction" not in n for n, _ in m.named_parameters())


def test_bias_update_under_gradient_accumulation_uses_all_micro_batches():
    torch.manual_seed(0)
    a = moe(router="sigmoid", downsample="none", downsample_factor=1).train()
    b = moe(router="sigmoid", downsample="none", downsample_factor=1).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 16, 32)
    opt = torch.optim.SGD(b.parameters(), lr=0.0)
    attach_router_bias_update(opt, b)
    # a: one big batch then an update; b: two micro-batches, one optimizer step (hook does the update)
    a(x)
    update_router_biases(a)
    b(x[:2]).embeds.sum().backward()
    b(x[2:]).embeds.sum().backward()
    opt.step()
    torch.testing.assert_close(a.moe.gate.e_score_correction_bias, b.moe.gate.e_score_correction_bias)
    assert a.moe.gate.e_score_correction_bias.abs().sum() > 0
    # evaluation forwards do not count
    b.eval()
    b(x)
    assert b.moe.load_since_update.sum() == 0


def test_gradients_reach_router_and_every_used_expert():
    torch.manual_seed(0)
    for expert_type in ("swiglu", "ffn"):
        m = moe(expert_type=expert_type, num_experts=6, top_k=2)
        x, mask = padded_batch()
        o = m(x, mask)
        (o.embeds.pow(2).sum() + o.aux_loss).backward()
        assert m.moe.gate.weight.grad.abs().sum() > 0
        used = o.tokens_per_expert > 0
        for name, p in m.moe.experts.named_parameters():
            per_expert = p.grad.reshape(p.shape[0], -1).abs().sum(-1)
            assert (per_expert[used] > 0).all(), name
            assert (per_expert[~used] == 0).all(), name


def test_top_p_takes_experts_until_mass_passes_p():
    torch.manual_seed(0)
    m = moe(
        router="top_p",
        num_experts=6,
        top_k=6,
        top_p=0.6,
        norm_topk_prob=False,
        downsample="none",
        downsample_factor=1,
    )
    x = torch.randn(1, 50, 32)
    o = m(x)
    probs = torch.softmax(o.router_logits[0], -1)
    sorted_p, _ = probs.sort(-1, descending=True)
    chosen = (o.expert_indices[0] >= 0).sum(-1)
    expected = ((sorted_p.cumsum(-1) - sorted_p) < 0.6).sum(-1)
    assert torch.equal(chosen, expected)
    assert chosen.min() >= 1 and chosen.float().mean() < 6
    torch.testing.assert_close(
        o.expert_weights[0].sum(-1), (sorted_p * ((sorted_p.cumsum(-1) - sorted_p) < 0.6)).sum(-1)
    )
    assert int(o.tokens_per_expert.sum()) == int(chosen.sum())


def test_null_experts_let_tokens_use_fewer_real_experts():
    torch.manual_seed(0)
    m = moe(num_experts=4, num_null_experts=4, top_k=2, downsample="none", downsample_factor=1)
    with torch.no_grad():
        m.moe.gate.weight[4:, 0] = 5.0  # null experts attractive for tokens with a positive first feature
    x = torch.randn(1, 200, 32)
    o = m(x)
    real = ((o.expert_indices[0] >= 0) & (o.expert_indices[0] < 4)).sum(-1)
    assert real.min() == 0 and real.max() == 2
    assert int(o.tokens_per_expert.sum()) == int(real.sum())
    assert o.router_logits.shape[-1] == 8 and o.tokens_per_expert.shape == (4,)
    # a token that chose only null experts gets only the shared expert's output
    only_null = real == 0
    shared = m.norm_out(m.aggregate(m.moe.shared_expert(x[0][only_null])))
    torch.testing.assert_close(o.embeds[0][only_null], shared, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"top_k": 9, "num_experts": 8}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"router": "top_p", "top_p": 0.0}, "top_p"),
        ({"router": "top_p", "top_p": 1.5}, "top_p"),
        ({"router": "sigmoid", "num_null_experts": 2}, "null"),
        ({"aggregation": "linear"}, "mixture_dim"),
        ({"kernel": "cuda"}, "kernel"),
        ({"load_balance_coef": -1.0}, "load_balance_coef"),
        ({"num_experts": 0}, "num_experts"),
        ({"expert_hiden_dim": 3}, "unknown config key"),
    ],
)
def test_bad_moe_configs_raise_clear_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        moe(**kw)


def test_config_dataclass_is_the_registry_config():
    m = moe()
    assert isinstance(m.config, MoEAdapterConfig) and m.config.type == "moe"


class _ReferenceGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, inverse, num_rows, slots):  # noqa: ANN001
        ctx.save_for_backward(inverse)
        ctx.num_rows, ctx.slots = num_rows, slots
        return x[order[:num_rows] // slots]

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (inverse,) = ctx.saved_tensors
        full = grad.new_zeros(inverse.numel(), grad.shape[-1])
        full[: ctx.num_rows] = grad
        return full[inverse].view(-1, ctx.slots, grad.shape[-1]).sum(1), None, None, None, None


def _reference_dispatch_to_experts(experts, x, routing, kernel, fold=False):
    """The dispatch and combine as they were before index_select (advanced indexing, a zero-padded gradient
    buffer, a sum over the K slots): the faster path must give the same bits, forward and backward. ``fold``:
    the bf16 path's maths (weights folded into the experts, an unweighted sum over the slots) by plain
    autograd."""
    e, slots = experts.num_experts, routing.indices.shape[1]
    keys = routing.indices.reshape(-1)
    keys = torch.where((keys >= 0) & (keys < e), keys, torch.full_like(keys, e))
    sorted_keys, order = torch.sort(keys, stable=True)
    counts = torch.bincount(sorted_keys, minlength=e + 1)[:e]
    num_rows = int(counts.sum())
    n = x.shape[0]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    rows = _ReferenceGather.apply(experts.normalize(x), order, inverse, num_rows, slots)
    row_weights = routing.weights.reshape(-1)[order[:num_rows]] if fold else None
    y = experts(rows, counts, sorted_keys[:num_rows], kernel, row_weights)
    full = torch.nn.functional.pad(y, (0, 0, 0, n * slots - y.shape[0]))
    unsorted = full[inverse].view(n, slots, -1)
    if fold:
        return unsorted.sum(1)
    return torch.bmm(routing.weights.unsqueeze(1), unsorted).squeeze(1)


def _fast_and_reference_results(top_k, num_null_experts, expert_type="swiglu", autocast=False, fold=None):
    """Outputs and gradients (x's, then every parameter's) of the layer's dispatch and of the reference
    (``fold``: the reference's combine; default: the one the layer's dtype takes, folded under autocast)."""
    from audiomoe.adapters.moe import dispatch_to_experts

    torch.manual_seed(top_k)
    layer = MoELayer(
        MoEAdapterConfig(
            input_dim=24,
            output_dim=20,
            num_experts=8,
            top_k=top_k,
            num_null_experts=num_null_experts,
            expert_type=expert_type,
            expert_hidden_dim=12,
            kernel="loop",
        ),
        24,
        20,
    )
    x = torch.randn(37, 24, requires_grad=True)
    grads, outs = [], []
    for dispatch in (dispatch_to_experts, None):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            routing = layer.gate(x)
            if dispatch is None:
                out = _reference_dispatch_to_experts(
                    layer.experts, x, routing, "loop", autocast if fold is None else fold
                )
            else:
                out, _ = dispatch(layer.experts, x, routing, "loop")
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).pow(2).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters() if p.grad is not None])
    if num_null_experts:  # some slots computed nothing: the padded paths ran
        assert (layer.gate(x).indices >= 8).any()
    assert len(grads[0]) == len(grads[1]) > 1
    return outs, grads


@pytest.mark.parametrize(("top_k", "num_null_experts"), [(1, 0), (2, 0), (3, 0), (8, 0), (2, 3)])
def test_dispatch_and_combine_give_the_reference_bits_forward_and_backward(top_k, num_null_experts):
    outs, grads = _fast_and_reference_results(top_k, num_null_experts)
    assert torch.equal(outs[0], outs[1])
    for fast, reference in zip(grads[0], grads[1], strict=True):
        if top_k <= 3:
            assert torch.equal(fast, reference)
        else:  # the old sum over 8 slots reduced in another order than slot by slot: last bits only
            torch.testing.assert_close(fast, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("expert_type", ["swiglu", "ffn"])
@pytest.mark.parametrize("num_null_experts", [0, 3])
def test_dispatch_and_combine_under_bf16_autocast_give_the_reference_bits(
    expert_type, num_null_experts, monkeypatch
):
    """Under autocast the experts run in bf16 with the routing weights folded in (the ffn expert's fp32 bias
    makes y fp32 first): the hand-written dispatch and combine gradients must equal autograd's over the
    reference, bit for bit."""
    from audiomoe.adapters import kernels

    monkeypatch.setattr(kernels, "_FUSED_FAILED", True)  # eager SwiGLU: no compile in a unit test
    outs, grads = _fast_and_reference_results(2, num_null_experts, expert_type, autocast=True)
    assert outs[0].dtype == outs[1].dtype == (torch.bfloat16 if expert_type == "swiglu" else torch.float32)
    assert torch.equal(outs[0], outs[1])
    for fast, reference in zip(grads[0], grads[1], strict=True):
        assert fast.dtype == reference.dtype
        assert torch.equal(fast, reference)


@pytest.mark.parametrize("expert_type", ["swiglu", "ffn"])
def test_the_folded_bf16_combine_equals_the_weighted_sum_within_bf16_rounding(expert_type, monkeypatch):
    """``w·down(h) = down(w·h)``: folding the routing weights into the experts changes only the rounding,
    forward and every gradient (the router's included)."""
    from audiomoe.adapters import kernels

    monkeypatch.setattr(kernels, "_FUSED_FAILED", True)
    outs, grads = _fast_and_reference_results(2, 0, expert_type, autocast=True, fold=False)
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=2e-2, atol=2e-2)
    assert not torch.equal(outs[0], outs[1])  # the folded path did run
    for folded, weighted in zip(grads[0], grads[1], strict=True):
        scale = weighted.float().abs().max()
        torch.testing.assert_close(folded.float() / scale, weighted.float() / scale, rtol=0, atol=3e-2)
