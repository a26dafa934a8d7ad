"""Bring your own data and tasks, from the CLI only: a tasks file declaring ``emotion`` with a Hugging Face
``save_to_disk`` directory, a lhotse cuts file (segments) and a gzip JSONL validates, trains (tiny preset, a few
steps) and evaluates with accuracy; the tasks travel with the run and the model; a clip corrupted after
validation is skipped during training and counted."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.cli.main import main as cli
from audiomoe.data.tasks import DECLARED, OPEN_TASKS, TASKS, TasksFileError, read_tasks_file

LABELS = ("anger", "happiness", "sadness", "neutral")
TASKS_YAML = """\
tasks:
  emotion:
    group: paralinguistic
    metric: accuracy
    labels: [anger, happiness, sadness, neutral]
    synonyms: {angry: anger, happy: happiness, sad: sadness}
    instructions:
      - What emotion does the speaker express?
      - How does the speaker feel?
"""


@pytest.fixture
def clean_tasks() -> Iterator[None]:
    """Tasks files register into the process-wide registry: put it back so other tests never see them."""
    saved = [(registry, dict(registry)) for registry in (TASKS, OPEN_TASKS, DECLARED)]
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)


def write_clips(root: Path, n: int = 8) -> list[dict]:
    """``n`` tones, one label each (cycling), as native rows with paths relative to ``root``."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        t = np.arange(8000 + 800 * i) / 16000
        sf.write(root / "clips" / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 4)) * t), 16000)
        rows.append({"key": f"c{i}", "audio": f"clips/c{i}.wav", "task": "emotion",
                     "instruction": "What emotion does the speaker express?", "answer": LABELS[i % 4]})  # fmt: skip
    return rows


def train(root: Path, source: str, extra: str = "", steps: int = 3) -> tuple[dict, Path]:
    run = root / "run"
    config = root / "train.yaml"
    config.write_text(
        f"model: {{preset: tiny}}\ndata: {{train: [{source}], tasks: [{root / 'tasks.yaml'}], batch_size: 3{extra}}}\n"
        f"out_dir: {run}\nsteps: {steps}\nprogress: false\ntensorboard: false\n"
    )
    assert cli(["train", "--config", str(config)]) == 0
    return json.loads((run / "summary.json").read_text()), run


def evaluate(root: Path, run: Path, source: str) -> dict:
    report = root / "eval.json"
    assert cli(["eval", "--checkpoint", str(run), "--manifest", source, "--tasks", str(root / "tasks.yaml"),
                "--json", str(report), "--max-new-tokens", "3"]) == 0  # fmt: skip
    return json.loads(report.read_text())


def train_and_eval(root: Path, source: str) -> tuple[dict, dict, Path]:
    summary, run = train(root, source)
    return summary, evaluate(root, run, source), run


def test_hf_dataset_dir_with_a_tasks_file_validates_trains_and_evaluates(
    tmp_path: Path, clean_tasks: None, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = pytest.importorskip("datasets")
    rows = write_clips(tmp_path)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "tasks.yaml").write_text(TASKS_YAML)
    source = str(tmp_path / "hf")

    capsys.readouterr()
    assert cli(["data", "validate", source]) == 0  # undeclared: an open task, a note, never an error
    assert "task 'emotion' is not declared" in capsys.readouterr().err
    assert cli(["data", "validate", source, "--tasks", str(tmp_path / "tasks.yaml")]) == 0
    assert "not declared" not in capsys.readouterr().err

    summary, report, run = train_and_eval(tmp_path, source)
    assert summary["steps"] == 3 and summary["train_items"] == 8
    assert summary["durations_from_headers"] == 8  # the dataset has no duration column: read from headers
    emotion = report["tasks"]["emotion"]
    assert emotion["metric"] == "accuracy" and emotion["n"] == 8 and 0.0 <= emotion["accuracy"] <= 1.0
    assert report["groups"].keys() == {"paralinguistic"}
    for directory in (run, run / "model"):
        (saved,) = read_tasks_file(directory / "tasks.yaml")
        assert saved == TASKS["emotion"] and saved.labels == LABELS

    # The model evaluates with the tasks it was trained with: no --tasks needed in a fresh registry ...
    TASKS.pop("emotion")
    again = tmp_path / "again.json"
    assert cli(["eval", "--checkpoint", str(run), "--manifest", source, "--json", str(again),
                "--max-new-tokens", "3"]) == 0  # fmt: skip
    assert json.loads(again.read_text())["tasks"]["emotion"]["metric"] == "accuracy"
    # ... and a tasks file that defines it differently is one line naming the conflict.
    TASKS.pop("emotion")
    (tmp_path / "other.yaml").write_text(TASKS_YAML.replace("metric: accuracy", "metric: macro_f1"))
    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(run), "--manifest", source, "--tasks", str(tmp_path / "other.yaml"),
                "--max-new-tokens", "3"]) == 2  # fmt: skip
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert (
        line.startswith("audiomoe eval: error: ") and "task 'emotion' is already defined differently" in line
    )


def test_lhotse_cuts_segments_and_a_clip_corrupted_after_validation_is_skipped(
    tmp_path: Path, clean_tasks: None
) -> None:
    lhotse = pytest.importorskip("lhotse")
    rows = write_clips(tmp_path)
    cuts = []
    for row in rows:
        recording = lhotse.Recording.from_file(tmp_path / row["audio"])
        sup = lhotse.SupervisionSegment(id=row["key"], recording_id=recording.id, start=0.1, duration=0.3,
                                        text=row["answer"], speaker="spk", language="en")  # fmt: skip
        cuts.append(lhotse.MonoCut(id=row["key"], start=0.1, duration=0.3, channel=0, recording=recording,
                                   supervisions=[sup], custom={"task": "emotion"}))  # fmt: skip
    lhotse.CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    (tmp_path / "tasks.yaml").write_text(TASKS_YAML)
    source = str(tmp_path / "cuts.jsonl.gz")
    assert cli(["data", "validate", source, "--tasks", str(tmp_path / "tasks.yaml")]) == 0

    from audiomoe.data.manifest import load_manifest, load_record_audio

    record = load_manifest(source).records[0]
    assert (record.start, record.duration, record.attributes["speaker"]) == (0.1, 0.3, "spk")
    assert load_record_audio(record).shape == (round(0.3 * 16000),)  # the segment, not the file

    clip = tmp_path / "clips" / "c5.wav"
    good = clip.read_bytes()
    clip.write_bytes(b"RIFF\x00\x00\x00\x00WAVE broken after validation")
    # The preflight pass decodes every file of every segment before step 1: the bad one is dropped there.
    summary, run = train(tmp_path, source, ", on_bad_line: skip", steps=2)
    assert summary["skipped"]["train_clips"] == 1 and summary["skipped_clips"] == 0
    shutil.rmtree(run)
    # Without preflight the loader meets it. Equal durations: 8 one-clip buckets, so 8 steps pass every clip
    # (the bad one costs its batch, not a step).
    summary, run = train(tmp_path, source, ", on_bad_line: skip, preflight: false", steps=8)
    assert summary["steps"] == 8 and summary["skipped_clips"] >= 1
    assert all(reason.startswith("c5: ") and "c5.wav" in reason for reason in summary["skip_reasons"])
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "loss" in r]  # train records (kernel_choice records carry no counts)
    assert logged[-1]["skipped_clips"] == summary["skipped_clips"] and logged[0]["skipped_clips"] <= 1
    clip.write_bytes(good)
    report = evaluate(tmp_path, run, source)
    assert report["tasks"]["emotion"]["metric"] == "accuracy" and report["tasks"]["emotion"]["n"] == 8


def test_gzip_jsonl_trains_and_a_decode_failure_without_skip_stops_with_one_line(
    tmp_path: Path, clean_tasks: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = write_clips(tmp_path, 6)
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "tasks.yaml").write_text(TASKS_YAML)
    source = str(tmp_path / "train.jsonl.gz")
    assert cli(["data", "validate", source, "--tasks", str(tmp_path / "tasks.yaml")]) == 0
    # a weighted source and duration-budget batches, through the config as a user writes them
    summary, run = train(tmp_path, f"{{path: {source}, weight: 2}}", ", max_batch_seconds: 2.0")
    saved = (run / "config.yaml").read_text()
    assert "weight: 2.0" in saved and "max_batch_seconds: 2.0" in saved
    assert summary["skipped_clips"] == 0 and summary["train_items"] == 6
    report = evaluate(tmp_path, run, source)
    assert report["tasks"]["emotion"]["n"] == 6

    (tmp_path / "clips" / "c2.wav").write_bytes(b"not audio")
    config = tmp_path / "fail.yaml"
    config.write_text(
        f"data: {{train: [{source}], tasks: [{tmp_path / 'tasks.yaml'}], batch_size: 6}}\n"
        f"out_dir: {tmp_path / 'run2'}\nsteps: 6\nprogress: false\ntensorboard: false\n"  # 6 one-clip batches
    )
    capsys.readouterr()
    assert cli(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "c2.wav" in err and "data.on_bad_line=skip" in err


def test_tasks_file_errors_name_the_file_and_key(tmp_path: Path, clean_tasks: None) -> None:
    cases = {
        "tasks:\n  emotion: {metric: accuracy, labelz: [a]}\n": "tasks.emotion.labelz: unknown key (did you mean",
        "tasks:\n  emotion: {labels: [a, b], instructions: [x]}\n": "tasks.emotion: give a metric",
        "tasks:\n  e: {metric: accuracy, labels: [a], synonyms: {b: c}, instructions: [x]}\n": "'c' is not one of",
        "tasks:\n  e: {metric: accuracy, instructions: [Why?, no]}\n": "quote entries holding '?'",
    }
    for text, expected in cases.items():
        path = tmp_path / "t.yaml"
        path.write_text(text)
        with pytest.raises(TasksFileError) as info:
            read_tasks_file(path)
        assert str(info.value).startswith(str(path)) and expected in str(info.value), str(info.value)


def test_parquet_with_embedded_audio_and_a_column_mapping_converts_to_native_jsonl(
    tmp_path: Path, clean_tasks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``Audio`` column holding bytes (as hub parquet files do) is written once to the audio cache; columns
    with other names map to the native fields; ``data convert`` writes native JSONL(.gz) any format reads."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("AUDIOMOE_CACHE", str(tmp_path / "cache"))
    rows = write_clips(tmp_path, 4)
    table = {
        "wav": [
            {"bytes": (tmp_path / r["audio"]).read_bytes(), "path": f"gone/{r['key']}.wav"} for r in rows
        ],
        "label": [r["answer"] for r in rows],
        "id": [r["key"] for r in rows],
    }
    dataset = datasets.Dataset.from_dict(table).cast_column("wav", datasets.Audio(decode=False))
    dataset.to_parquet(str(tmp_path / "emo.parquet"))
    (tmp_path / "tasks.yaml").write_text(TASKS_YAML)
    out = tmp_path / "native.jsonl.gz"
    args = ["data", "convert", str(tmp_path / "emo.parquet"), str(out), "--tasks", str(tmp_path / "tasks.yaml"),
            "--task", "emotion", "--column", "audio=wav", "--column", "answer=label", "--column", "key=id"]  # fmt: skip
    assert cli(args) == 0
    with gzip.open(out, "rt") as handle:
        converted = [json.loads(line) for line in handle]
    assert [(c["key"], c["task"], c["answer"]) for c in converted] == [
        (r["key"], "emotion", r["answer"]) for r in rows
    ]
    cached = (out.parent / converted[0]["audio"]).resolve()  # stored relative to the manifest's folder
    assert (
        cached.is_relative_to(tmp_path / "cache" / "audio")
        and cached.read_bytes() == (tmp_path / rows[0]["audio"]).read_bytes()
    )
    assert cli(["data", "validate", str(out), "--tasks", str(tmp_path / "tasks.yaml")]) == 0


def test_nemo_manifest_with_offsets_is_a_transcription_source(tmp_path: Path) -> None:
    from audiomoe.data.manifest import load_manifest, load_record_audio

    write_clips(tmp_path, 2)
    lines = [
        {"audio_filepath": "clips/c0.wav", "text": "hello world", "duration": 0.5},
        {
            "audio_filepath": "clips/c1.wav",
            "text": "second part",
            "duration": 0.2,
            "offset": 0.25,
            "lang": "en",
        },
    ]
    (tmp_path / "nemo.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    first, second = load_manifest(tmp_path / "nemo.json").records
    assert (first.task, first.answer, first.transcript, first.start) == (
        "transcribe",
        "hello world",
        "hello world",
        None,
    )
    assert (second.start, second.duration, second.attributes["language"]) == (0.25, 0.2, "en")
    assert load_record_audio(second).shape == (3200,)


def test_messages_with_system_prompt_several_turns_and_two_audios(tmp_path: Path, clean_tasks: None) -> None:
    """ "Which of the two clips is louder?" after a first turn: both assistant turns carry the loss, everything
    else is -100, each <audio> tag becomes its own clip's placeholders; such records train and evaluate."""
    from audiomoe.data.manifest import load_manifest
    from audiomoe.models.batching import RecordBatcher
    from audiomoe.models.lalm import AudioLanguageModel
    from audiomoe.models.presets import build_preset
    from audiomoe.models.processor import IGNORE_INDEX

    write_clips(tmp_path, 4)
    line = {
        "key": "pair0", "task": "louder", "audios": ["clips/c0.wav", "clips/c1.wav"],
        "messages": [
            {"role": "system", "content": "You compare recordings."},
            {"role": "user", "content": "First clip: <audio>. What pitch is it?"},
            {"role": "assistant", "content": "low"},
            {"role": "user", "content": "Second clip: <audio>. Which of the two clips is louder?"},
            {"role": "assistant", "content": "the second"},
        ],
    }  # fmt: skip
    single = {"messages": [{"role": "user", "content": "<audio>Which digit is spoken?"},
                           {"role": "assistant", "content": "two"}], "audios": ["clips/c2.wav"], "key": "one"}  # fmt: skip
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(single) + "\n")
    pair, one = load_manifest(tmp_path / "m.jsonl").records
    assert (
        pair.paths == [str(tmp_path / "clips/c0.wav"), str(tmp_path / "clips/c1.wav")]
        and len(pair.messages) == 5
    )
    assert (pair.instruction, pair.answer) == (
        "Second clip: . Which of the two clips is louder?",
        "the second",
    )
    assert one.messages is None and one.task == "digit"  # one turn, one audio: a plain record as before

    model = AudioLanguageModel(build_preset("tiny", adapter_type="linear"))
    batcher = RecordBatcher([pair, one], model.processor)
    batch = batcher.collate([0, 1])
    tokenizer = model.processor.tokenizer
    labelled = [tokenizer.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]
    assert "low" in labelled[0] and "the second" in labelled[0] and "louder" not in labelled[0]
    assert "two" in labelled[1] and "digit" not in labelled[1]
    placeholders = (batch["input_ids"] == model.processor.audio_token_id).sum(dim=1).tolist()
    per_clip = model.processor.audio_token_lengths(batch["audio_lengths"]).tolist()
    assert batch["audio_features"].shape[0] == 3 and placeholders == [per_clip[0] + per_clip[1], per_clip[2]]
    asked = batcher.collate(
        [0], with_answers=False
    )  # evaluation: the last question, earlier turns as context
    text = tokenizer.decode(asked["input_ids"][0])
    assert "What pitch" in text and "louder" in text and "the second" not in text and "labels" not in asked

    assert cli(["data", "validate", str(tmp_path / "m.jsonl")]) == 0
    config = tmp_path / "t.yaml"
    config.write_text(f"data: {{train: [{tmp_path / 'm.jsonl'}], batch_size: 2}}\nout_dir: {tmp_path / 'run'}\n"
                      "steps: 2\nprogress: false\ntensorboard: false\n")  # fmt: skip
    assert cli(["train", "--config", str(config)]) == 0
    report = tmp_path / "e.json"
    assert cli(["eval", "--checkpoint", str(tmp_path / "run"), "--manifest", str(tmp_path / "m.jsonl"),
                "--json", str(report), "--max-new-tokens", "2"]) == 0  # fmt: skip
    assert set(json.loads(report.read_text())["tasks"]) == {"louder", "digit"}
