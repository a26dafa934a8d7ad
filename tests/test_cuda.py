"""The CUDA path (``pytest -m cuda``; skipped without a GPU, run by scripts/gpu_check.sh on one): grouped_mm equals
the loop kernel in bf16, the MoE adapter on CUDA matches the CPU in fp32, and a tiny LALM trains a step in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiomoe.adapters import build_adapter
from audiomoe.adapters.kernels import get_kernel
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.runtime import autocast

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_grouped_mm_equals_the_loop_in_bf16_on_cuda() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=gen).cuda().bfloat16()
    weight = torch.randn(4, 48, 64, generator=gen).cuda().bfloat16()
    counts = torch.tensor([150, 50, 0, 100], device="cuda")
    loop, grouped = get_kernel("loop")(x, weight, counts), get_kernel("grouped_mm")(x, weight, counts)
    assert torch.allclose(loop.float(), grouped.float(), rtol=2e-2, atol=2e-2)


def test_the_moe_adapter_on_cuda_matches_the_cpu() -> None:
    torch.manual_seed(0)
    adapter = build_adapter(
        {"type": "moe", "input_dim": 64, "output_dim": 48, "downsample": "none", "downsample_factor": 1,
         "num_experts": 4, "top_k": 2, "expert_hidden_dim": 32, "shared_hidden_dim": 32}
    )  # fmt: skip
    x = torch.randn(2, 50, 64)
    mask = torch.ones(2, 50, dtype=torch.bool)
    cpu = adapter(x, mask).embeds
    cuda = adapter.cuda()(x.cuda(), mask.cuda()).embeds
    assert torch.allclose(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_a_tiny_lalm_trains_a_step_in_bf16_on_cuda() -> None:
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset("tiny", adapter_type="moe")).cuda().train()
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000)]
    batch = model.processor(["<audio>What is it?", "<audio>Say it."], clips, answers=["a tone", "hello"])
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with autocast("bf16", "cuda"):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
