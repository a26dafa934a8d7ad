"""Built-in corpus: clips decode with their labelled duration, labels are physically true, seeds reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiomoe.data.audio import load_audio
from audiomoe.data.corpus import build_corpus
from audiomoe.data.manifest import read_manifest, validate_manifest
from audiomoe.data.music import MusicSpec, midi_to_hz, render_music
from audiomoe.data.speech import HELD_OUT_SPEAKERS, SPEAKERS, SpeechSpec, synthesize, synthesize_raw
from audiomoe.data.tasks import TASK_GROUPS, TASKS

SR = 16000
N = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, n=N, seed=7, workers=2)
    return out


def median_f0(wave: np.ndarray, sr: int = SR, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median autocorrelation pitch over voiced frames (64 ms frames, clear periodicity only)."""
    frame, hop = 1024, 256
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    energy = np.sqrt((frames**2).mean(axis=1))
    f0s = []
    for x in frames[energy > 0.2 * energy.max()]:
        x = x - x.mean()
        ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * frame)) ** 2)[:frame]
        lo, hi = int(sr / fmax), int(sr / fmin)
        lag = lo + int(ac[lo:hi].argmax())
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s))


def test_clips_decode_with_labelled_duration(corpus: Path) -> None:
    records = {split: read_manifest(corpus / f"{split}.jsonl") for split in ("train", "dev", "test")}
    assert sum(len(r) for r in records.values()) == N
    groups = set()
    for split, recs in records.items():
        for r in recs:
            wave = load_audio(r.audio)
            assert abs(len(wave) / SR - r.duration) < 1e-3
            assert 1.0 <= r.duration <= 4.0
            task = TASKS[r.task]
            groups.add(task.group)
            if task.labels:
                assert r.answer in task.labels, (r.task, r.answer)
            category = r.attributes["category"]
            assert category in ("speech", "music", "sound", "mixture")
            if category == "mixture":
                assert " and " in r.attributes["components"] and "snr_db" in r.attributes
            if "speech" in r.attributes["components"]:
                assert r.transcript
            if split == "test" and "speaker" in r.attributes and r.task != "speaker":
                assert SPEAKERS[r.attributes["speaker"]] in HELD_OUT_SPEAKERS
    assert groups == set(TASK_GROUPS)
    assert validate_manifest(corpus / "train.jsonl") == []
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["clips_per_second"] > 0 and summary["held_out_sentences"]
    assert "| category |" in (corpus / "summary.md").read_text()


def test_same_seed_gives_byte_identical_manifests(corpus: Path, tmp_path: Path) -> None:
    build_corpus(tmp_path, n=N, seed=7, workers=1)  # a different worker count must not matter
    for split in ("train", "dev", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (corpus / f"{split}.jsonl").read_bytes()


def test_speech_labels_are_physically_true() -> None:
    def speak(speaker: str, rate: int = 170, text: str = "the old clock stopped") -> np.ndarray:
        return synthesize(SpeechSpec(text, SPEAKERS[speaker].voice, rate, 50, 100))

    female = [median_f0(speak(s)) for s in ("alice", "carol", "iris")]
    male = [median_f0(speak(s)) for s in ("bruce", "dave", "hank")]
    assert min(female) > 1.3 * max(male), (female, male)
    slow, fast = len(speak("erin", rate=115)), len(speak("erin", rate=250))
    assert fast < 0.75 * slow
    # The in-process engine gives the same samples as the espeak-ng command line (what makes builds reproducible).
    # Other voices spoken first must leave no trace (the engine keeps state between utterances and voices).
    for name in ("alice", "liam", "bruce"):
        synthesize_raw(SpeechSpec("go", SPEAKERS[name].voice, 150, 30, 140), "library")
    spec = SpeechSpec("press seven", SPEAKERS["kate"].voice, 200, 80, 60)
    assert np.array_equal(synthesize_raw(spec, "library")[0], synthesize_raw(spec, "cli")[0])


def test_major_and_minor_chords_differ_in_their_third() -> None:
    def third_ratio(mode: str) -> float:
        wave = render_music(MusicSpec("piano", 60, mode, 60.0, "chords", (0,), 2.0))
        spectrum = np.abs(np.fft.rfft(wave))
        freqs = np.fft.rfftfreq(len(wave), 1 / SR)

        def energy(note: int) -> float:
            hz = midi_to_hz(note)
            return float(spectrum[(freqs > hz * 0.985) & (freqs < hz * 1.015)].sum())

        return energy(64) / energy(63)  # E4 (major third of C4) over Eb4 (minor third)

    assert third_ratio("major") > 5.0
    assert third_ratio("minor") < 0.2
