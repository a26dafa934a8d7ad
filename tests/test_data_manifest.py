"""Manifests: three schemas -> one record; validate reports every bad line with its number and fails."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.cli.main import main
from audiomoe.data.importers import import_folder
from audiomoe.data.manifest import ManifestError, load_manifest, read_manifest, validate_manifest


def _tone(path: Path, seconds: float = 1.0, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    return path


def test_every_schema_parses_to_the_same_record(tmp_path: Path) -> None:
    _tone(tmp_path / "a.wav")
    native = {
        "key": "utt1",
        "audio": "a.wav",
        "task": "transcribe",
        "instruction": "Transcribe the speech.",
        "answer": "hello world",
        "duration": 1.0,
    }
    slam = {"key": "utt1", "source": "a.wav", "target": "hello world", "duration": 1.0}
    messages = {
        "key": "utt1",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "<audio>Transcribe the speech."},
            {"role": "assistant", "content": "hello world"},
        ],
        "audios": ["a.wav"],
        "duration": 1.0,
    }
    records = []
    for name, obj in (("native", native), ("slam", slam), ("messages", messages)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(obj) + "\n")
        (record,) = read_manifest(path)
        records.append(record)
    # the system prompt is kept (the conversation travels whole); everything else is the same record
    assert records[2].messages is not None and records[2].messages[0]["content"] == "You are helpful."
    records[2] = dataclasses.replace(records[2], messages=None, audios=None)
    assert records[0] == records[1] == records[2]
    assert records[0].audio == str(tmp_path / "a.wav")  # relative path resolved against the manifest folder
    assert records[0].transcript == "hello world"


def test_validate_reports_each_bad_line_and_exits_nonzero(tmp_path: Path, capsys) -> None:
    _tone(tmp_path / "good.wav")
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00not audio at all")
    good = {"key": "k1", "audio": "good.wav", "task": "gender", "answer": "male", "duration": 1.0}
    lines = [
        json.dumps(good),  # 1 ok
        "{not json",  # 2 bad JSON
        json.dumps({"foo": 1}),  # 3 unknown schema
        json.dumps({**good, "key": "k4", "start": -0.5}),  # 4 bad segment start (an unknown task is no error)
        json.dumps({**good, "key": "k5", "audio": "missing.wav"}),  # 5 missing file
        json.dumps({**good, "key": "k6", "audio": "garbage.wav"}),  # 6 undecodable
        json.dumps({**good, "key": "k7", "audio": "silent.wav"}),  # 7 silent
        json.dumps({**good, "key": "k8", "duration": 3.0}),  # 8 wrong duration
        json.dumps(good),  # 9 duplicate key
        json.dumps(
            {"key": "k10", "messages": [{"role": "user", "content": "hi"}], "audios": ["good.wav"]}
        ),  # 10
        json.dumps({**good, "key": "k11", "duration": -1}),  # 11 bad duration value
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    problems = validate_manifest(manifest)
    assert sorted({p.line for p in problems}) == list(range(2, 12))
    reasons = {p.line: p.reason for p in problems}
    expected = {
        2: "not valid JSON",
        3: "unknown schema",
        4: "'start' must be",
        5: "not found",
        6: "cannot decode",
        7: "silent",
        8: "duration says",
        9: "duplicate key",
        10: "exactly one",
        11: "positive number",
    }
    for line, words in expected.items():
        assert words in reasons[line], (line, reasons[line])
    assert str(problems[0]).startswith(f"{manifest}:2: ")

    assert main(["data", "validate", str(manifest)]) == 2
    out = capsys.readouterr().out
    for line in range(2, 12):
        assert f"{manifest}:{line}: " in out
    assert main(["data", "validate", str(tmp_path / "m.jsonl"), "--no-audio"]) == 2

    # Training loaders: fail fast names the line; skip mode keeps the good lines and counts the rest.
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: "):
        read_manifest(manifest)
    loaded = load_manifest(manifest, on_error="skip")
    assert [r.key for r in loaded.records] == ["k1", "k6", "k7", "k8"]  # decoding is validate's job
    assert "skipped 7" in loaded.summary()


def test_import_folder_by_pattern_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    root.mkdir()
    for name in ("dog_ann_1.wav", "cat_bob_2.wav", "notes.wav"):
        _tone(root / name, 0.5)
    report = import_folder(root, "sound_event", tmp_path / "m.jsonl", pattern="{label}_{speaker}_{index}.wav")
    assert [(r.answer, r.attributes["speaker"]) for r in report.records] == [("cat", "bob"), ("dog", "ann")]
    assert len(report.skipped) == 1 and "notes.wav" in report.skipped[0]
    assert validate_manifest(tmp_path / "m.jsonl") == []
    (tmp_path / "labels.csv").write_text("file,label,room\ndog_ann_1.wav,dog,kitchen\n")
    report = import_folder(root, "sound_event", tmp_path / "c.jsonl", csv_path=tmp_path / "labels.csv")
    (record,) = read_manifest(tmp_path / "c.jsonl")
    assert record.answer == "dog" and record.attributes == {"room": "kitchen"} and record.duration == 0.5


def test_a_registered_schema_reads_a_users_own_manifest_format(tmp_path: Path) -> None:
    from audiomoe.data import manifest

    saved = dict(manifest.SCHEMAS)
    try:

        @manifest.register_schema("wavlabel", ("wav", "label"))
        def parse(obj: dict, line: int) -> manifest.AudioRecord:
            return manifest.AudioRecord(key=f"line{line}", audio=obj["wav"], task="gender",
                                        instruction="Is the speaker male or female?", answer=obj["label"])  # fmt: skip

        (tmp_path / "a.wav").write_bytes(b"")
        (tmp_path / "m.jsonl").write_text(json.dumps({"wav": "a.wav", "label": "female"}) + "\n")
        (record,) = manifest.read_manifest(tmp_path / "m.jsonl")
        assert (record.key, record.answer, record.audio) == ("line1", "female", str(tmp_path / "a.wav"))
        assert list(manifest.SCHEMAS)[0] == "wavlabel"  # tried before the built-in schemas
        with pytest.raises(manifest.ManifestError, match=r"expected one of: wavlabel \{wav, label, \.\.\.\}"):
            manifest.parse_line(json.dumps({"foo": 1}), 1)
    finally:
        manifest.SCHEMAS.clear()
        manifest.SCHEMAS.update(saved)


def test_preflight_decodes_every_audio_of_a_multi_audio_record_and_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiomoe.data.preflight import preflight

    monkeypatch.setenv("AUDIOMOE_PREFLIGHT_CACHE", str(tmp_path / "cache.json"))
    _tone(tmp_path / "a.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE not audio")
    turns = [
        {"role": "user", "content": "<audio> vs <audio>: same speaker?"},
        {"role": "assistant", "content": "no"},
    ]
    lines = [
        {"key": "pair", "messages": turns, "audios": ["a.wav", "broken.wav"]},  # the second audio is bad
        {"key": "seg1", "audio": "a.wav", "task": "transcribe", "answer": "x", "start": 0.0, "duration": 0.4},
        {"key": "seg2", "audio": "a.wav", "task": "transcribe", "answer": "y", "start": 0.5, "duration": 0.4},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = load_manifest(manifest)

    report = preflight([loaded], on_bad_line="skip")
    assert [r.key for r in report.records[0]] == ["seg1", "seg2"]
    assert [(p.line, "broken.wav" in p.reason) for p in report.problems] == [(1, True)]
    assert (report.decoded, report.cached) == (1, 0)  # a.wav once for the pair and both segments
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: .*broken\.wav"):
        preflight([loaded], on_bad_line="fail")


def test_resume_fingerprint_takes_source_mappings(tmp_path: Path) -> None:
    from audiomoe.data.sources import Source
    from audiomoe.training.config import TrainConfig
    from audiomoe.training.fingerprint import config_fingerprint

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"key": "a", "audio": "a.wav", "task": "transcribe", "answer": "x"}\n')
    plain, weighted = TrainConfig(), TrainConfig()
    plain.data.train = [str(manifest)]
    weighted.data.train = [Source(str(manifest), weight=2.0)]
    print_plain = config_fingerprint(plain)["data.train[0]"]
    assert print_plain.startswith("m.jsonl (") and "sha256" in print_plain
    assert config_fingerprint(weighted)["data.train[0]"] == f"{print_plain} [weight 2]"


def test_resume_fingerprint_sees_the_batch_budget_not_the_worker_count() -> None:
    from audiomoe.training.config import TrainConfig
    from audiomoe.training.fingerprint import config_fingerprint, fingerprint_diff

    base, budget, workers = TrainConfig(), TrainConfig(), TrainConfig()
    budget.data.max_batch_seconds = 60.0
    workers.data.num_workers = 2
    assert fingerprint_diff(config_fingerprint(base), config_fingerprint(budget)) == {
        "data.max_batch_seconds": (0.0, 60.0)
    }
    assert fingerprint_diff(config_fingerprint(base), config_fingerprint(workers)) == {}
