"""The real-data recipe of docs/own-data.md, command by command, on a folder the test writes as public corpora
lay theirs out (``{label}_{speaker}_{index}.wav``, and the same clips listed in a CSV): tasks file -> import ->
validate -> train linear and MoE -> evaluate both. Only CLI commands, as a user would type them."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.cli.main import main as cli
from audiomoe.data.tasks import DECLARED, OPEN_TASKS, TASKS

EMOTIONS = {"anger": 420.0, "happiness": 660.0, "sadness": 180.0, "neutral": 300.0}
TASKS_FILE = """\
tasks:
  emotion:
    group: paralinguistic
    metric: accuracy
    labels: [anger, happiness, sadness, neutral]
    synonyms: {angry: anger, happy: happiness, sad: sadness}
    instructions:
      - What emotion does the speaker express?
      - How does the speaker feel?
      - Which emotion do you hear?
"""
CONFIG = """\
model: {preset: tiny, adapter: {type: linear}}
data:
  train: [manifests/train.jsonl]
  dev: [manifests/dev.jsonl]
  tasks: [emotion.yaml]
  batch_size: 4
  num_workers: 1
steps: 4
eval_every: 0
progress: false
tensorboard: false
"""


@pytest.fixture
def clean_tasks() -> Iterator[None]:
    saved = [(registry, dict(registry)) for registry in (TASKS, OPEN_TASKS, DECLARED)]
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)


def write_corpus(root: Path) -> None:
    """Two speakers x four emotions x two takes, as ``{label}_{speaker}_{index}.wav``; a CSV lists the same
    files with a gender column."""
    rows = []
    for split, takes in (("train", (0, 1)), ("dev", (2,))):
        folder = root / "corpus" / split
        folder.mkdir(parents=True)
        for label, hz in EMOTIONS.items():
            for speaker in ("spk01", "spk02"):
                for take in takes:
                    t = np.arange(int(16000 * (0.5 + 0.1 * take))) / 16000
                    name = f"{label}_{speaker}_{take:03d}.wav"
                    sf.write(folder / name, 0.3 * np.sin(2 * np.pi * hz * t), 16000)
                    rows.append({"file": f"{split}/{name}", "label": label, "gender": "female"})
    with (root / "corpus" / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "gender"])
        writer.writeheader()
        writer.writerows(rows)


def test_folder_of_labelled_recordings_to_linear_vs_moe_without_python(
    tmp_path: Path, clean_tasks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path)
    Path("emotion.yaml").write_text(TASKS_FILE)
    Path("train.yaml").write_text(CONFIG)
    pattern = "{label}_{speaker}_{index}.wav"
    for split in ("train", "dev"):
        assert cli(["data", "import-folder", f"corpus/{split}", "--pattern", pattern, "--task", "emotion",
                    "--tasks", "emotion.yaml", "--out", f"manifests/{split}.jsonl"]) == 0  # fmt: skip
        assert cli(["data", "validate", f"manifests/{split}.jsonl", "--tasks", "emotion.yaml"]) == 0
    # the CSV route gives the same clips and labels
    assert cli(["data", "import-folder", "corpus", "--csv", "corpus/labels.csv", "--task", "emotion",
                "--tasks", "emotion.yaml", "--out", "manifests/all.jsonl"]) == 0  # fmt: skip
    lines = [json.loads(x) for x in Path("manifests/all.jsonl").read_text().splitlines()]
    assert (
        len(lines) == 24
        and {x["answer"] for x in lines} == set(EMOTIONS)
        and lines[0]["attributes"]["gender"]
    )

    scores = {}
    for adapter in ("linear", "moe"):
        assert (
            cli(
                [
                    "train",
                    "--config",
                    "train.yaml",
                    f"model.adapter.type={adapter}",
                    f"out_dir=runs/{adapter}",
                ]
            )
            == 0
        )
        assert cli(["eval", "--checkpoint", f"runs/{adapter}", "--manifest", "manifests/dev.jsonl",
                    "--json", f"runs/{adapter}/eval.json", "--max-new-tokens", "4"]) == 0  # fmt: skip
        report = json.loads(Path(f"runs/{adapter}/eval.json").read_text())
        scores[adapter] = report["tasks"]["emotion"]
        summary = json.loads(Path(f"runs/{adapter}/summary.json").read_text())
        assert summary["steps"] == 4 and summary["num_workers"] == 1 and summary["train_items"] == 16
        assert f"type: {adapter}" in Path(f"runs/{adapter}/model/lalm_config.yaml").read_text()
    for adapter, emotion in scores.items():
        assert emotion["metric"] == "accuracy" and emotion["n"] == 8, adapter
        assert emotion["score"] == emotion["accuracy"] and 0.0 <= emotion["accuracy"] <= 1.0
