"""`audiomoe bench serve` end to end, on a few requests: a real `audiomoe serve` process, both arms, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiomoe.benchmarks.serve import percentile
from audiomoe.cli.main import main


def test_percentile_is_nearest_rank() -> None:
    values = [0.4, 0.1, 0.3, 0.2]
    assert percentile(values, 50) == 0.2
    assert percentile(values, 95) == 0.4
    assert percentile([7.0], 50) == 7.0


@pytest.mark.slow  # a second interpreter starts `audiomoe serve` (~15 s)
def test_bench_serve_prints_the_speedup_against_one_by_one(tmp_path: Path, capsys) -> None:
    out = tmp_path / "serve.json"
    args = ["bench", "serve", "--requests", "6", "--clients", "1", "3", "--max-tokens", "4", "--threads", "1",
            "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "one by one, in-process" in printed and "server, 3 clients" in printed
    assert "batching speed-up" in printed and "at 3 clients vs one by one in-process" in printed
    result = json.loads(out.read_text())
    assert set(result["server"]) == {"1", "3"}
    base, top = result["one_by_one_in_process"], result["server"]["3"]
    assert result["speedup"] == round(top["requests_per_s"] / base["requests_per_s"], 2)
    assert result["server"]["1"]["mean_batch"] == 1.0  # one client never has company
    assert 1.0 <= top["mean_batch"] <= 3.0
    for arm in (base, *result["server"].values()):
        assert 0 < arm["p50_ms"] <= arm["p95_ms"]
