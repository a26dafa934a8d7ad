"""``audiomoe compare`` on eval reports laid out as ARM/seed-N/eval.json (and its errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiomoe.cli.main import main
from audiomoe.data.tasks import get_task

TASKS = ("digit", "gender", "sound_event", "instrument", "scene", "transcribe")


def eval_report(rate: float, draw: int, n: int = 120, **extra: object) -> dict:
    """An eval report as ``audiomoe eval --json`` writes it, reduced to what compare reads; ``draw`` seeds the
    random outcomes (one per training seed), ``extra`` adds report keys such as ``arm`` / ``seed``."""
    rng = np.random.default_rng(1000 * draw + int(100 * rate))
    items, predictions = [], []
    for i in range(n):
        task = get_task(TASKS[i % len(TASKS)])
        item = {"key": f"clip{i}", "task": task.name, "group": task.group, "metric": task.metric}
        if task.metric == "wer":
            item |= {"errors": int(rng.binomial(6, 1 - rate)), "words": 6}
        else:
            item["correct"] = int(rng.random() < rate)
        items.append(item)
        answer = task.labels[i % len(task.labels)] if task.labels else "some words"
        predictions.append({"key": f"clip{i}", "task": task.name, "prediction": answer, "answer": answer})
    return {"overall": rate, "n": n, "items": items, "predictions": predictions, **extra}


def write(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for arm, rate in (("moe", 0.9), ("linear", 0.5), ("mlp", 0.85)):
        for seed in range(3):
            write(tmp_path / "runs" / arm / f"seed-{seed}" / "eval.json", eval_report(rate, seed))
    return tmp_path / "runs"


def test_compare_writes_json_markdown_and_a_forest_plot(runs: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out_json, out_md, out_png = tmp_path / "c.json", tmp_path / "c.md", tmp_path / "plots" / "forest.png"
    argv = ["compare", str(runs), "--json", str(out_json), "--markdown", str(out_md), "--plot", str(out_png)]
    assert main(argv + ["--resamples", "300"]) == 0
    result = json.loads(out_json.read_text())
    assert {"reference", "n_items", "tasks", "groups", "arms", "differences", "verdicts", "chance",
            "best_vs_chance", "method", "notes", "sources"} <= set(result)  # fmt: skip
    assert result["reference"] == "moe" and list(result["arms"]) == ["moe", "linear", "mlp"]
    assert result["arms"]["linear"]["seeds"] == [0, 1, 2] and result["n_items"] == 120
    assert set(result["differences"]) == {"linear", "mlp"}
    assert set(result["arms"]["moe"]["groups"]) == {"music", "paralinguistic", "scene", "semantic", "sound"}
    entry = result["differences"]["linear"]["overall"]["overall"]
    assert {"difference", "low", "high", "se", "p", "detectable"} <= set(entry)
    assert entry["low"] > 0  # 0.9 vs 0.5 on 120 items x 3 seeds
    linear = [v for v in result["verdicts"] if v["arm"] == "linear" and v["scope"] == "overall"]
    assert linear[0]["direction"] == "better" and linear[0]["sentence"].startswith(
        "MoE better than linear overall"
    )
    assert result["method"]["resamples"] == 300
    assert result["sources"]["moe"]["2"].endswith("moe/seed-2/eval.json")
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = out_md.read_text()
    assert "| arm | seeds |" in markdown and "MoE better than linear overall" in markdown
    assert markdown in capsys.readouterr().out  # printed as well


def test_arm_and_seed_from_report_keys_labels_and_arm_dirs(tmp_path: Path) -> None:
    # ARM/eval.json (seed 0), and files named anything whose report says arm and seed itself
    write(tmp_path / "a" / "moe" / "eval.json", eval_report(0.8, 0))
    write(tmp_path / "b" / "x.json", eval_report(0.6, 0, arm="linear", seed=0))
    write(tmp_path / "b" / "y.json", eval_report(0.6, 1, arm="linear", seed=1))
    out = tmp_path / "c.json"
    args = [str(tmp_path / "a"), str(tmp_path / "b" / "x.json"), str(tmp_path / "b" / "y.json")]
    assert main(["compare", *args, "--resamples", "50", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {a: v["seeds"] for a, v in result["arms"].items()} == {"moe": [0], "linear": [0, 1]}
    assert any("one seed" in note for note in result["notes"])
    # --label names the arm of each input, over what the path says; seeds then count the reports of an arm
    c = [
        str(write(tmp_path / "c" / f"{arm}-s{s}.json", eval_report(0.7, s)))
        for arm in ("m", "l")
        for s in (0, 1)
    ]
    argv = [
        "compare",
        *c,
        "--resamples",
        "50",
        "--json",
        str(out),
        "--label",
        "moe",
        "moe",
        "linear",
        "linear",
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert {a: v["seeds"] for a, v in result["arms"].items()} == {"moe": [0, 1], "linear": [0, 1]}
    assert result["sources"]["linear"]["1"].endswith("l-s1.json")


def bad(argv: list[str], capsys) -> str:  # noqa: ANN001
    assert main(["compare", *argv, "--resamples", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("audiomoe compare: error: ")
    return err


def test_bad_inputs_are_one_line_naming_the_file(runs: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    broken = tmp_path / "broken" / "moe" / "eval.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    assert str(broken) in bad([str(broken)], capsys) and "not JSON" in bad([str(broken)], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no eval.json below it" in bad([str(empty)], capsys)
    assert "no such file or directory" in bad([str(tmp_path / "missing")], capsys)
    assert "reference arm 'dense' not found" in bad([str(runs), "--reference", "dense"], capsys)
    mcq = write(tmp_path / "mcq" / "moe" / "eval.json", {"mcq": "mmau.json", "predictions": [{"id": "1"}]})
    assert "multiple-choice" in bad([str(mcq)], capsys)
    # an arm scored on other items: names the arm, seed and file
    other = eval_report(0.5, 1)
    other["items"][3]["key"] = "not-in-the-others"
    path = write(runs / "linear" / "seed-1" / "eval.json", other)
    err = bad([str(runs)], capsys)
    assert "arm 'linear' seed 1" in err and str(path) in err and "same manifest" in err
    # two reports claiming the same arm and seed
    write(tmp_path / "twice" / "moe" / "eval.json", eval_report(0.9, 0, seed=0))
    write(tmp_path / "twice" / "moe" / "seed-0" / "eval.json", eval_report(0.9, 0))
    assert "arm 'moe' seed 0 again" in bad([str(tmp_path / "twice")], capsys)
