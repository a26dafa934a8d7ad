"""The adapter benchmark runs end to end on a tiny shape and reports both ratios (timing itself is not tested)."""

from audiomoe.benchmarks.adapter_speed import Shape, bench_shape, format_table


def test_adapter_benchmark_reports_ratios_on_a_tiny_shape():
    shape = Shape(
        "tiny",
        tokens=64,
        input_dim=32,
        output_dim=32,
        num_experts=4,
        top_k=2,
        expert_hidden_dim=16,
        shared_hidden_dim=16,
    )
    result = bench_shape(shape, repeats=1, warmup=0)
    assert {"moe", "moe-loop", "dense", "hf-eager"} <= set(result["arms"])
    for key in ("moe_over_dense", "moe_over_hf_best"):
        assert result[key]["forward"] > 0 and result[key]["forward_backward"] > 0
    table = format_table({"shapes": {"tiny": result}})
    assert "moe_over_hf_best" in table and "| tiny | moe |" in table


def test_non_square_shapes_have_no_transformers_arm():
    shape = Shape(
        "rect",
        tokens=32,
        input_dim=32,
        output_dim=24,
        num_experts=4,
        top_k=2,
        expert_hidden_dim=16,
        shared_hidden_dim=16,
    )
    result = bench_shape(shape, repeats=1, warmup=0)
    assert "moe_over_hf_best" not in result and not any(a.startswith("hf-") for a in result["arms"])
