"""The demo's building blocks: the training-sentence grammar, the corpus BPE tokenizer, ASR views, corpus splits and
the competence rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiomoe.data.corpus import build_corpus
from audiomoe.data.manifest import AudioRecord, read_manifest, write_manifest
from audiomoe.data.speech import HELD_OUT_SENTENCES, TRAIN_SENTENCES
from audiomoe.models.tokenizer import trained_bpe_chatml_tokenizer
from audiomoe.recipes.demo.corpus import write_asr_views
from audiomoe.recipes.demo.report import competence


def test_training_sentences_cover_every_held_out_word_but_no_held_out_sentence() -> None:
    words = {w for s in TRAIN_SENTENCES for w in s.split()}
    missing = [w for s in HELD_OUT_SENTENCES for w in s.split() if w not in words]
    assert missing == []
    assert not set(HELD_OUT_SENTENCES) & set(TRAIN_SENTENCES)
    assert len(set(TRAIN_SENTENCES)) == len(TRAIN_SENTENCES) > 5000  # varied enough to be learnt word by word


def test_corpus_bpe_makes_corpus_words_single_tokens_and_round_trips_anything() -> None:
    tokenizer = trained_bpe_chatml_tokenizer(list(TRAIN_SENTENCES[:2000]), vocab_size=400)
    assert len(tokenizer) == 400
    ids = tokenizer("the cat is on the table", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6
    unseen = "zebras quack, 42 times!"
    assert tokenizer.decode(tokenizer(unseen, add_special_tokens=False)["input_ids"]) == unseen
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"


def _record(root: Path, key: str, task: str, transcript: str | None) -> AudioRecord:
    (root / f"{key}.wav").write_bytes(b"")  # the manifest reader checks that audio files exist
    return AudioRecord(key=key, audio=str(root / f"{key}.wav"), task=task, instruction="q?", answer="x",
                       attributes={"category": "speech"}, duration=1.0, transcript=transcript)  # fmt: skip


def test_asr_views_add_one_transcription_per_spoken_clip_of_another_task(tmp_path: Path) -> None:
    records = [
        _record(tmp_path, "a", "gender", "the cat sat"),
        _record(tmp_path, "b", "transcribe", "the dog ran"),  # already a transcription example
        _record(tmp_path, "c", "instrument", None),  # no speech
        _record(tmp_path, "d", "scene", "open the door"),
    ]
    write_manifest(records, tmp_path / "train.jsonl", relative=False)
    counts = write_asr_views(tmp_path / "train.jsonl", tmp_path / "train-asr.jsonl")
    assert counts == {"records": 4, "asr_views": 2}
    out = read_manifest(tmp_path / "train-asr.jsonl", check_files=False)
    views = {r.key: r for r in out if r.key.endswith("-asr")}
    assert set(views) == {"a-asr", "d-asr"}
    assert views["a-asr"].task == "transcribe" and views["a-asr"].answer == "the cat sat"
    assert views["a-asr"].audio == str(tmp_path / "a.wav")


def test_asr_views_of_a_manifest_read_through_a_relative_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "corpus").mkdir()
    write_manifest(
        [_record(tmp_path / "corpus", "a", "gender", "the cat sat")], tmp_path / "corpus" / "train.jsonl"
    )
    monkeypatch.chdir(tmp_path)  # as `audiomoe demo --out demo-out`: every path relative to the working dir
    write_asr_views(Path("corpus/train.jsonl"), Path("corpus/train-asr.jsonl"))
    out = read_manifest(Path("corpus/train-asr.jsonl"))  # checks that every audio file exists
    assert {Path(r.audio).resolve() for r in out} == {(tmp_path / "corpus" / "a.wav").resolve()}


def test_corpus_splits_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        build_corpus(tmp_path / "c", 20, splits={"train": 0.5, "dev": 0.1, "test": 0.1})


def _comparison(wer_by_arm: dict[str, float], ratio: float) -> dict:
    arms = {a: {"tasks": {"transcribe": {"per_seed": [1 - w, 1 - w, 1 - w]}}} for a, w in wer_by_arm.items()}
    best = {"semantic": {"arm": "moe", "mean": 0.5, "chance": 0.5 / ratio, "ratio": ratio}}
    return {"arms": arms, "tasks": {"transcribe": {}}, "best_vs_chance": best | {"overall": best["semantic"]}}


def test_competence_needs_the_wer_bar_and_twice_chance_in_every_group() -> None:
    good = competence(_comparison({"moe": 0.45, "linear": 0.6}, ratio=2.5))
    assert good["passes"] and good["transcription"]["arm"] == "moe"
    assert good["transcription"]["wer"] == pytest.approx(0.45)
    assert not competence(_comparison({"moe": 0.55, "linear": 0.6}, ratio=2.5))["passes"]
    weak = competence(_comparison({"moe": 0.45}, ratio=1.5))
    assert not weak["passes"] and not weak["groups"]["semantic"]["passes"]
    assert json.dumps(weak)  # JSON-able as it goes into report.json
