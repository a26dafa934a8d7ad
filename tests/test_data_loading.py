"""Training data loading: worker processes give the same batches in the same order as the main process and
resume at the same position; duration-budget batches and weighted mixing follow their definitions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from audiomoe.data.budget import DurationBudgetSampler, MixturePlan, epoch_indices
from audiomoe.data.sampler import BucketBatchSampler
from audiomoe.training.loading import LoaderStream

DURATIONS = [1.0 + (i * 7 % 13) / 4 for i in range(40)]


def fake_load(indices: Sequence[int]) -> tuple[dict[str, torch.Tensor] | None, list[str]]:
    """Stands in for decoding: index 13 "fails to decode"; a batch of only it yields None."""
    kept = [i for i in indices if i != 13]
    reasons = ["k13: cannot decode"] if 13 in indices else []
    return ({"ids": torch.tensor(kept)} if kept else None), reasons


def take(stream: LoaderStream, n: int) -> list[list[int]]:
    return [next(stream)["ids"].tolist() for _ in range(n)]


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_main_process_batches_in_order_and_resume(workers: int) -> None:
    plan = BucketBatchSampler(DURATIONS, 4, seed=3).batches
    main = LoaderStream(plan, fake_load, 0, skip_bad_clips=True)
    expected = take(main, 25)  # 10 batches per epoch: crosses two epoch boundaries
    assert main.skipped == 2 and main.reasons == ["k13: cannot decode"] * 2
    pooled = LoaderStream(plan, fake_load, workers, skip_bad_clips=True)
    assert take(pooled, 12) == expected[:12]
    state = pooled.state_dict()
    resumed = LoaderStream(plan, fake_load, workers, skip_bad_clips=True)
    resumed.load_state_dict(state)
    assert take(resumed, 13) == expected[12:] and resumed.skipped == main.skipped


def test_a_decode_failure_stops_the_stream_unless_skipping() -> None:
    from audiomoe.data.audio import AudioError

    strict = LoaderStream(BucketBatchSampler(DURATIONS, 40, num_buckets=1).batches, fake_load, 0)  # one batch
    with pytest.raises(AudioError, match=r"k13: cannot decode \(data.on_bad_line=skip drops"):
        next(strict)


def test_duration_budget_batches_stay_within_budget_and_cover_every_clip() -> None:
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 8.0, size=200).tolist() + [30.0]  # one clip alone over the budget
    sampler = DurationBudgetSampler(durations, max_seconds=24.0, max_batch_size=16, seed=1)
    batches = sampler.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(201))
    for batch in batches:
        longest = max(durations[i] for i in batch)
        assert len(batch) <= 16 and (len(batch) * longest <= 24.0 or len(batch) == 1)
    assert [30.0] in [[durations[i] for i in b] for b in batches]
    assert sampler.batches(0) == batches and sampler.batches(1) != batches  # seeded by (seed, epoch)
    # short clips come many to a batch, long ones few
    sizes = {len(b): max(durations[i] for i in b) for b in batches}
    assert max(sizes) >= 8 and sizes[max(sizes)] < 3.0
    quadratic = DurationBudgetSampler(durations, max_seconds=24.0, quadratic_duration=10.0, seed=1)
    assert len(quadratic.batches(0)) > len(DurationBudgetSampler(durations, 24.0, seed=1).batches(0))
    assert sampler.padding_fraction(0) < DurationBudgetSampler(
        durations, 24.0, num_buckets=1
    ).padding_fraction(0)


def test_mixing_weights_repeat_and_subsample_sources() -> None:
    sources = [0] * 10 + [1] * 20
    chosen = epoch_indices(sources, [2.0, 0.5], seed=0, epoch=0)
    assert sorted(i for i in chosen if i < 10) == sorted(list(range(10)) * 2)
    part = [i for i in chosen if i >= 10]
    assert len(part) == 10 and len(set(part)) == 10
    assert part != [i for i in epoch_indices(sources, [2.0, 0.5], seed=0, epoch=1) if i >= 10]
    plan = MixturePlan([1.0] * 30, sources, [2.0, 0.5], lambda d: BucketBatchSampler(d, 5, seed=0), seed=0)
    batches = plan.batches(0)
    assert sum(len(b) for b in batches) == 30 and plan.batches(0) == batches


def test_bench_data_reports_rates_per_worker_count_and_the_step_times(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from audiomoe.cli.main import main as cli

    assert (
        cli(["bench", "data", "--clips", "2", "--batch-size", "2", "--workers", "0", "1", "--steps", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| workers | clips/s | speed-up |" in out and "| 0 |" in out and "| 1 |" in out
    assert "| 0 workers |" in out and "| 1 workers |" in out and "| compute only |" in out
