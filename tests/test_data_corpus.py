"""Built-in corpus: clips decode with their labelled duration, labels are physically true, seeds reproduce."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiomoe.data.audio import load_audio
from audiomoe.data.corpus import (
    CORPUS_VERSION,
    TEXT_ONLY_AUDIO,
    ClipPlan,
    CorpusSummary,
    _assign,
    build_corpus,
    corpus_tasks,
    plan_clip,
    plan_text_items,
)
from audiomoe.data.manifest import read_manifest, validate_manifest
from audiomoe.data.music import MusicSpec, midi_to_hz, render_music
from audiomoe.data.speech import (
    HELD_OUT_SENTENCES,
    HELD_OUT_SPEAKERS,
    SPEAKERS,
    TRAIN_SENTENCES,
    SpeechSpec,
    synthesize,
    synthesize_raw,
)
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


def test_whisper_voice_is_independent_of_the_callers_c_rand_state() -> None:
    # The whisper variant's breath noise comes from the C library's rand(); a pool worker that used rand() before
    # starting a voice server once made a different (differently trimmed) clip than another worker: a corpus built
    # with 2 workers then differed from one built with 1.
    import ctypes

    spec = SpeechSpec("the old clock stopped at noon", "en-us+whisper", 170, 50, 100)
    libc = ctypes.CDLL(None)
    for advance in (3, 11):
        for _ in range(advance):
            libc.rand()
        # speaking another voice starts a new server for the next one
        synthesize_raw(SpeechSpec("go", "en-us+f1", 150, 30, 140), "library")
        assert np.array_equal(synthesize_raw(spec, "library")[0], synthesize_raw(spec, "cli")[0]), advance


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


def _plans(n: int, seed: int, extra_tasks: tuple[str, ...] = ()) -> list[ClipPlan]:
    splits, tasks = _assign(n, seed, group_tasks=corpus_tasks(extra_tasks))
    return [plan_clip(i, seed, splits[i], tasks[i]) for i in range(n)]


def test_default_corpus_plans_are_unchanged() -> None:
    # The plans of 500 clips at seed 11, as every corpus since CORPUS_VERSION 2 made them: optional tasks and
    # the planner's registry must not move a byte of the default corpus (the demo's cached corpora and figures
    # rest on it). A deliberate change of the default corpus bumps CORPUS_VERSION and this digest together.
    plans = [dataclasses.asdict(p) for p in _plans(500, 11)]
    digest = hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest()
    assert CORPUS_VERSION == 2
    assert digest == "f9c314d354e81cedb699d697281625905bb7a4a01db41a7ba5043989aa2e73f0"


def test_spoken_arithmetic_answers_follow_from_the_words() -> None:
    plans = _plans(1000, 3, ("arithmetic",))
    by_task = {t: [p for p in plans if p.task == t] for t in {p.task for p in plans}}
    assert len(by_task["arithmetic"]) == 50  # a quarter of the semantic fifth
    assert {len(by_task[t]) for t in ("transcribe", "digit", "keyword")} == {50}
    number = {w: i for i, w in enumerate(TASKS["digit"].labels)}
    results, operators = set(), set()
    for p in by_task["arithmetic"]:
        words = p.transcript.split()
        op_at = next(i for i, w in enumerate(words) if w in ("plus", "minus"))
        a, op, b = number[words[op_at - 1]], words[op_at], number[words[op_at + 1]]
        value = a + b if op == "plus" else a - b
        assert p.answer == TASKS["arithmetic"].labels[value] == p.attributes["arithmetic"]
        assert p.attributes["expression"] == " ".join(words[op_at - 1 : op_at + 2])
        results.add(value)
        operators.add(op)
    assert results == set(range(10)) and operators == {"plus", "minus"}
    # the other groups' clips are planned as without the extra task (only the semantic draw is shared)
    default = {p.index: p for p in _plans(1000, 3)}
    same_group = [p for p in plans if TASKS[p.task].group != "semantic"]
    assert same_group and all(p == default[p.index] for p in same_group)


def test_text_only_items_are_new_train_draws_with_answers_from_their_words() -> None:
    tasks = ("transcribe", "digit", "keyword", "arithmetic")
    items = plan_text_items(0, tasks, 300)
    assert [r.key for r in items] == [r.key for r in plan_text_items(0, tasks, 300)]  # deterministic
    assert items != plan_text_items(1, tasks, 300)  # the seed draws other words
    assert {t: sum(r.task == t for r in items) for t in tasks} == dict.fromkeys(tasks, 300)
    assert all(r.audio == TEXT_ONLY_AUDIO and r.transcript for r in items)
    sentences = {r.transcript for r in items if r.task == "transcribe"}
    assert sentences <= set(TRAIN_SENTENCES) and not sentences & set(HELD_OUT_SENTENCES)
    assert all(r.answer == r.transcript for r in items if r.task == "transcribe")
    number = {w: i for i, w in enumerate(TASKS["digit"].labels)}
    for r in items:
        if r.task == "digit":
            assert r.answer in r.transcript.split()
        if r.task == "arithmetic":
            a, op, b = r.attributes["expression"].split()
            assert number[r.answer] == (number[a] + number[b] if op == "plus" else number[a] - number[b])
    with pytest.raises(ValueError, match="no spoken content.*choose from"):
        plan_text_items(0, ("gender",), 1)


def test_unknown_extra_task_names_what_the_corpus_can_add() -> None:
    with pytest.raises(ValueError, match="arithmet.*unknown; the corpus can add: arithmetic"):
        corpus_tasks(("arithmetc",))


def test_ensure_corpus_rebuilds_when_the_extra_tasks_change(tmp_path: Path, monkeypatch) -> None:
    from audiomoe.recipes.demo import corpus as demo_corpus

    built: list[tuple[str, ...]] = []

    def fake_build(directory, clips, seed, splits, extra_tasks=()):
        built.append(tuple(extra_tasks))
        return CorpusSummary(str(directory), clips, seed, {}, [], [], 0, 0, 0, 0, {}, splits, CORPUS_VERSION,
                             list(extra_tasks))  # fmt: skip

    monkeypatch.setattr(demo_corpus, "build_corpus", fake_build)
    splits = {"train": 0.8, "dev": 0.1, "test": 0.1}
    for split in splits:
        (tmp_path / f"{split}.jsonl").write_text("")
    # a summary written before extra tasks existed: the default corpus
    old = {"n": 10, "seed": 0, "splits": splits, "version": CORPUS_VERSION}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    assert demo_corpus.ensure_corpus(tmp_path, 10, 0, splits)["reused"] is True
    assert demo_corpus.ensure_corpus(tmp_path, 10, 0, splits, ("arithmetic",))["reused"] is False
    assert built == [("arithmetic",)]


def test_a_dying_worker_ends_the_build_with_a_message_not_a_hang(tmp_path: Path) -> None:
    # A script that builds the corpus at module level runs again inside every worker (Python's rule for the
    # forkserver / spawn start methods), and each worker dies: the build must stop and say so. mp.Pool respawned
    # the workers and waited for the lost chunk forever.
    script = tmp_path / "unguarded.py"
    script.write_text(
        f"from audiomoe.data.corpus import build_corpus\nbuild_corpus({str(tmp_path / 'out')!r}, 12, workers=2)\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode != 0
    assert "a corpus worker process died before finishing" in run.stderr
    assert 'if __name__ == "__main__":' in run.stderr
