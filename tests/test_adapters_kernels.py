"""Expert kernels: loop and grouped_mm agree bit for bit on CPU, and ``auto`` picks the one it measured faster."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from audiomoe.adapters import kernels


def _problem(dtype: torch.dtype, rows: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 64, generator=gen).to(dtype).requires_grad_()
    weight = torch.randn(4, 48, 64, generator=gen).to(dtype).requires_grad_()
    counts = torch.tensor([rows // 2, rows // 6, 0, rows - rows // 2 - rows // 6])  # uneven, one expert empty
    return x, weight, counts


def _forward_backward(name: str, dtype: torch.dtype) -> list[torch.Tensor]:
    x, weight, counts = _problem(dtype)
    out = kernels.get_kernel(name)(x, weight, counts)
    (out.float() * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return [out.detach(), x.grad, weight.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loop_and_grouped_mm_are_bit_identical_on_cpu(dtype: torch.dtype) -> None:
    # why kernel: auto may choose by timing: on CPU the choice can never change a number
    for loop, grouped in zip(
        _forward_backward("loop", dtype), _forward_backward("grouped_mm", dtype), strict=True
    ):
        assert torch.equal(loop, grouped)


def _slowed(kernel: kernels.GroupedLinear, seconds: float) -> kernels.GroupedLinear:
    def slow(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return kernel(x, weight, counts)

    return slow


@pytest.mark.parametrize(
    "fast, backward",
    [(k, False) for k in kernels.probed_kernels(False)] + [(k, True) for k in kernels.probed_kernels(True)],
)
def test_auto_picks_the_kernel_it_measured_fastest(
    monkeypatch: pytest.MonkeyPatch, fast: str, backward: bool
) -> None:
    kernels.reset_auto_choices()
    candidates = kernels.probed_kernels(backward)
    for slow in candidates:
        if slow != fast:
            monkeypatch.setitem(kernels.KERNELS, slow, _slowed(kernels.KERNELS[slow], 0.02))
    x, weight, counts = _problem(torch.float32)
    with torch.set_grad_enabled(backward):
        out = kernels.get_kernel("auto")(x, weight, counts)
    (choice,) = kernels.auto_choices()
    assert choice.kernel == fast and choice.backward == backward and choice.rows == 512
    assert (
        all(getattr(choice, f"{k}_ms") > 20 for k in candidates if k != fast)
        and getattr(choice, f"{fast}_ms") < 20
    )
    assert f"auto -> {fast} " in choice.describe() and "64->48" in choice.describe()
    assert torch.equal(out, kernels.loop_grouped_linear(x, weight, counts))
    kernels.reset_auto_choices()


def test_training_never_takes_the_padded_kernel_whose_weight_gradient_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # at a demo-sized class the padded kernel's weight gradient need not be bit-identical (its zero rows are the
    # weight-gradient GEMM's inner dimension; on a Zen 3 EPYC it differed by up to 3.4e-5, on an AVX-512 Xeon it
    # did not: the GEMM library's blocking decides), so a timing-made choice could change training: with a
    # backward auto must not take it even where it is the fastest, and its time is not even measured
    kernels.reset_auto_choices()
    for slow in ("loop", "grouped_mm"):
        monkeypatch.setitem(kernels.KERNELS, slow, _slowed(kernels.KERNELS[slow], 0.02))
    x_small, weight_small, counts_small = _problem(torch.float32)
    kernels.get_kernel("auto")(x_small, weight_small, counts_small)
    (choice,) = kernels.auto_choices()
    assert choice.backward and choice.kernel in ("loop", "grouped_mm") and choice.grouped_mm_padded_ms is None
    assert "grouped_mm_padded" not in choice.describe()
    kernels.reset_auto_choices()


def test_auto_probes_once_per_shape_class() -> None:
    kernels.reset_auto_choices()
    x, weight, counts = _problem(torch.float32, rows=300)
    auto = kernels.get_kernel("auto")
    auto(x, weight, counts)
    auto(x[:260], weight, torch.tensor([100, 60, 0, 100]))  # 260 rows: same class (<= 512)
    assert len(kernels.auto_choices()) == 1
    with torch.no_grad():  # inference is its own class: forward only
        auto(x, weight, counts)
    auto(torch.randn(600, 64), weight, torch.tensor([150, 150, 150, 150]))  # 600 rows -> the 1024 class
    classes = [(c.rows, c.backward) for c in kernels.auto_choices()]
    assert classes == [(512, True), (512, False), (1024, True)]
    kernels.reset_auto_choices()


def test_auto_takes_the_loop_where_grouped_mm_cannot_run() -> None:
    kernels.reset_auto_choices()
    x = torch.randn(10, 7)  # 7 float32 = 28 bytes per row: not 16-byte aligned
    weight = torch.randn(2, 5, 7)
    out = kernels.get_kernel("auto")(x, weight, torch.tensor([4, 6]))
    assert torch.equal(out, kernels.loop_grouped_linear(x, weight, torch.tensor([4, 6])))
    assert kernels.auto_choices() == []  # nothing to choose, nothing probed


@pytest.mark.parametrize("kernel", ["auto", "grouped_mm"])
def test_an_fp32_moe_layer_trains_under_torch_compile(kernel: str) -> None:
    """grouped_mm's fake-tensor kernel accepts bf16 only, so a compiled fp32 MoE (``train.compile``) failed with
    a TorchRuntimeError; it now takes the loop there. ``aot_eager`` traces with fake tensors as inductor does,
    without inductor's C++ build."""
    from audiomoe.adapters.moe import MoEAdapterConfig, MoELayer

    torch.manual_seed(0)
    config = MoEAdapterConfig(input_dim=32, output_dim=32, num_experts=4, top_k=2, expert_hidden_dim=16)
    layer = MoELayer(dataclasses.replace(config, kernel=kernel), 32, 32)
    x = torch.randn(64, 32)
    grads = []
    for module in (torch.compile(layer, backend="aot_eager"), layer):
        layer.zero_grad(set_to_none=True)
        out = module(x).out
        out.pow(2).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in layer.parameters()]))
    (compiled_out, compiled_grads), (eager_out, eager_grads) = grads
    torch.testing.assert_close(compiled_out, eager_out)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager)


def test_fused_silu_mul_matches_eager_within_bf16_rounding() -> None:
    gen = torch.Generator().manual_seed(0)
    gate32, up32 = (torch.randn(37, 24, generator=gen) * 3 for _ in range(2))
    gate, up = (t.to(torch.bfloat16).requires_grad_() for t in (gate32, up32))
    out = kernels.silu_mul(gate, up)
    out.float().sum().backward()
    reference = torch.nn.functional.silu(gate32.bfloat16().float()) * up32.bfloat16().float()
    assert (
        out.dtype == torch.bfloat16 and not kernels._FUSED_FAILED
    )  # the compiled kernel ran, not the fallback
    assert torch.allclose(out.float(), reference, rtol=1e-2, atol=1e-2)
    g32, u32 = gate.detach().float().requires_grad_(), up.detach().float().requires_grad_()
    (torch.nn.functional.silu(g32) * u32).sum().backward()
    assert torch.allclose(gate.grad.float(), g32.grad, rtol=2e-2, atol=2e-2)
    assert torch.allclose(up.grad.float(), u32.grad, rtol=2e-2, atol=2e-2)


def test_fp32_silu_mul_is_eager_bit_for_bit() -> None:
    gate, up = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.equal(kernels.silu_mul(gate, up), torch.nn.functional.silu(gate) * up)


def test_fused_scaled_silu_mul_matches_eager_within_bf16_rounding() -> None:
    """The routing weights folded into the experts' SwiGLU: ``silu(gate) * up * scale`` per row, gradients to
    all three (the router learns through ``scale``)."""
    gen = torch.Generator().manual_seed(1)
    gate32, up32 = (torch.randn(37, 24, generator=gen) * 3 for _ in range(2))
    scale32 = torch.rand(37, generator=gen)
    gate, up = (t.to(torch.bfloat16).requires_grad_() for t in (gate32, up32))
    scale = scale32.clone().requires_grad_()
    out = kernels.silu_mul(gate, up, scale)
    weights = torch.linspace(-1, 1, 24)
    (out.float() * weights).sum().backward()
    assert out.dtype == torch.bfloat16 and not kernels._FUSED_FAILED and True in kernels._FUSED
    g32, u32 = gate.detach().float().requires_grad_(), up.detach().float().requires_grad_()
    s32 = scale32.bfloat16().float().requires_grad_()
    reference = torch.nn.functional.silu(g32) * u32 * s32.unsqueeze(-1)
    (reference * weights).sum().backward()
    torch.testing.assert_close(out.float(), reference.detach(), rtol=1e-2, atol=1e-2)
    for fused, exact in ((gate, g32), (up, u32), (scale, s32)):
        torch.testing.assert_close(fused.grad.float(), exact.grad, rtol=2e-2, atol=2e-2)
    fp32 = kernels.silu_mul(gate32, up32, scale32)  # fp32: eager, bit for bit
    assert torch.equal(fp32, torch.nn.functional.silu(gate32) * up32 * scale32.unsqueeze(-1))


def test_a_fused_kernel_that_cannot_compile_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broken(*tensors: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setitem(kernels._FUSED, False, broken)
    monkeypatch.setattr(kernels, "_FUSED_FAILED", False)
    gate, up = torch.randn(4, 6).bfloat16(), torch.randn(4, 6).bfloat16()
    with caplog.at_level("WARNING", logger="audiomoe.adapters.kernels"):
        out = kernels.silu_mul(gate, up)
    assert torch.equal(out, torch.nn.functional.silu(gate) * up)
    assert kernels._FUSED_FAILED and "no C++ compiler found" in caplog.text


def _per_expert_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The definition: F.linear on each expert's slice of rows, through plain autograd."""
    chunks = x.split(counts.tolist())
    return torch.cat(
        [torch.nn.functional.linear(c, w) for c, w in zip(chunks, weight.unbind(0), strict=True)]
    )


@pytest.mark.parametrize("autocast", [False, True])
def test_loop_kernel_equals_per_expert_linear_bit_for_bit(autocast: bool) -> None:
    # the loop kernel writes its GEMMs straight into the buffers (no cat / stack copies): same numbers, forward and
    # backward, an empty expert's weight gradient exactly zero, and under bf16 autocast the same casts as F.linear
    results = []
    for kernel in (kernels.loop_grouped_linear, _per_expert_linear):
        x, weight, counts = _problem(torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = kernel(x, weight, counts)
        (out.float() * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        results.append([out.detach(), x.grad, weight.grad])
    assert results[0][0].dtype == (torch.bfloat16 if autocast else torch.float32)
    assert results[0][2].dtype == torch.float32  # gradients reach the fp32 weights through the cast
    for ours, reference in zip(*results, strict=True):
        assert torch.equal(ours, reference)
    assert not results[0][2][2].any()  # expert 2 has no rows
    # only the weight needs a gradient (a frozen input): no input gradient is made
    x, weight, counts = _problem(torch.float32)
    out = kernels.loop_grouped_linear(x.detach(), weight, counts)
    (grad_weight,) = torch.autograd.grad(out.sum(), (weight,))
    assert torch.equal(
        grad_weight, torch.autograd.grad(_per_expert_linear(x.detach(), weight, counts).sum(), (weight,))[0]
    )
