"""`audiomoe analyze` end to end on two tiny saved LALMs (linear and MoE) and a hand-made manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.cli.main import main

SR = 16000
# (category, task, answer, gender): one task group per category, plus a paralinguistic speech task
ROWS = [
    ("speech", "transcribe", "hello there", "female"),
    ("speech", "gender", "male", "male"),
    ("sound", "sound_event", "dog", ""),
    ("sound", "sound_event", "siren", ""),
    ("music", "instrument", "piano", ""),
    ("music", "instrument", "violin", ""),
]


def _clip(category: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.4 * SR)) / SR
    if category == "music":
        return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 660 * t)
    if category == "sound":
        return 0.3 * rng.standard_normal(t.size)
    return (
        0.3
        * np.sin(2 * np.pi * (150 + 100 * np.sin(2 * np.pi * 3 * t)) * t)
        * (1 + np.sin(2 * np.pi * 4 * t))
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    from audiomoe.models.lalm import AudioLanguageModel
    from audiomoe.models.presets import build_preset

    root = tmp_path_factory.mktemp("analyze")
    rng = np.random.default_rng(0)
    lines = []
    for i, (category, task, answer, gender) in enumerate(ROWS):
        sf.write(root / f"clip{i}.wav", _clip(category, rng).astype(np.float32), SR)
        attrs = {"category": category, **({"gender": gender} if gender else {})}
        lines.append(json.dumps({"key": f"k{i}", "audio": f"clip{i}.wav", "task": task, "answer": answer,
                                 "attributes": attrs}))  # fmt: skip
    (root / "dev.jsonl").write_text("\n".join(lines) + "\n")
    checkpoints = []
    for adapter in ("linear", "moe"):
        AudioLanguageModel(build_preset("tiny", adapter)).save_pretrained(root / adapter)
        checkpoints.append(root / adapter)
    return root, checkpoints


def test_analyze_two_checkpoints_writes_plots_and_json(setup: tuple[Path, list[Path]], capsys) -> None:
    root, (linear, moe) = setup
    out = root / "out"
    argv = ["analyze", "--checkpoint", str(linear), "--checkpoint", str(moe), "--manifest", str(root / "dev.jsonl"),
            "--out", str(out), "--probe-batches", "1", "--probe-batch-size", "2", "--max-items", "6",
            "--influence-lr", "0"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert set(result["conflict_ratio"]) == {"linear", "moe"}
    assert all(0.0 <= r <= 1.0 for r in result["conflict_ratio"].values())
    assert set(result["mean_cosine"]["category"]) == {"speech|sound", "speech|music", "sound|music"}
    assert set(result["mean_cosine"]["task_group"]["music|sound"]) == {"linear", "moe"}
    assert set(result["nmi"]) == {"moe"}  # the dense adapter has no routing, and that is no error
    assert {"category", "task", "task_group", "gender"} <= set(result["nmi"]["moe"])
    assert 0.0 <= result["nmi"]["moe"]["category"] <= 1.0
    moe_routing = result["models"]["moe"]["routing"]
    assert sum(moe_routing["balance"]["load"]) == pytest.approx(1.0, abs=1e-5)
    assert moe_routing["activation"]["category"]["uniform"] == pytest.approx(2 / 8)  # tiny preset: top-2 of 8
    assert set(result["models"]["moe"]["gradients"]["category"]["selections"]) >= {
        "adapter",
        "shared",
        "expert_0",
    }
    assert list(result["models"]["linear"]["gradients"]["category"]["selections"]) == ["adapter"]
    assert result["influence"] == {}  # --influence-lr 0 skips it; its numbers are tested on known cases
    for name in result["plots"].values():
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert {"cosine_category", "activation_moe_category", "load"} <= set(result["plots"])
    assert sum(k.startswith("routing_moe_") for k in result["plots"]) == 3  # one clip per category
    assert "moe: conflict ratio" in capsys.readouterr().out


def test_analyze_bad_input_is_one_line_error(setup: tuple[Path, list[Path]], capsys) -> None:
    root, (linear, _) = setup
    argv = [
        "analyze",
        "--checkpoint",
        str(root / "missing"),
        "--manifest",
        str(root / "dev.jsonl"),
        "--out",
        str(root),
    ]
    assert main(argv) == 2
    assert "missing is not a directory" in capsys.readouterr().err
    argv = ["analyze", "--checkpoint", str(linear), "--label", "a", "--label", "b", "--manifest",
            str(root / "dev.jsonl"), "--out", str(root)]  # fmt: skip
    assert main(argv) == 2
    assert "one per checkpoint" in capsys.readouterr().err
