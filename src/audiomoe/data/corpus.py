"""The built-in heterogeneous audio corpus: speech, music, sound events and mixtures with every attribute known.

``build_corpus(out_dir, n, seed)`` writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (native schema, audio
paths relative to ``out_dir``), 16 kHz mono WAVs under ``audio/{split}/``, and ``summary.json`` / ``summary.md``
(counts per task and attribute value, held-out voices and sentences, clips/s).

Design (a toy LALM training set a tiny LLM can learn in minutes):

* one record per clip; the clip is made for its task. Task groups are balanced exactly (semantic,
  paralinguistic, sound, music, scene each get n/5 clips) and tasks are balanced within a group;
* answers are short labels (or a 2-7 word transcript), instruction paraphrases are drawn per record;
* pure clips carry ``category`` speech | music | sound; mixtures ``category=mixture`` and ``components``
  (the scene answer, e.g. ``"speech and music"``) plus the attributes of every component and ``snr_db``;
* splits 80/10/10 by default (``splits=`` to change). The test split uses only held-out voices (except the speaker-identity task, whose labels must
  be known voices) and only held-out sentences; dev draws from the training voices and sentences.

Determinism: clip ``i`` is planned from ``np.random.default_rng([seed, i])`` in the parent process and rendered
from its plan alone, so worker count and scheduling cannot change a byte of the manifests.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audiomoe.data.audio import save_audio
from audiomoe.data.manifest import AudioRecord, write_manifest
from audiomoe.data.music import PROGRESSIONS, TEMPO_BPM, TEXTURES, TIMBRES, MusicSpec, render_music
from audiomoe.data.sounds import EVENTS, render_event
from audiomoe.data.speech import (
    ACCENT_VOICES,
    ARITHMETIC_CARRIERS,
    ARITHMETIC_OPERATORS,
    DIGIT_CARRIERS,
    HELD_OUT_SENTENCES,
    HELD_OUT_SPEAKERS,
    KEYWORD_CARRIERS,
    LOUDNESS_AMP,
    PITCH_LEVEL,
    RATE_WPM,
    STYLE_GENDER,
    STYLE_VARIANTS,
    TRAIN_SENTENCES,
    TRAIN_SPEAKERS,
    Speaker,
    SpeechSpec,
    cpu_seconds,
    require_espeak,
    synthesize,
)
from audiomoe.data.tasks import (
    DIGITS,
    INSTRUMENTS,
    KEYWORDS,
    MODES,
    SCENE_COMPONENTS,
    SOUND_EVENTS,
    STYLES,
    TASK_GROUPS,
    TASKS,
    TEMPOS,
)

SAMPLING_RATE = 16000
MIN_DURATION, MAX_DURATION = 1.0, 4.0
SPLITS: dict[str, float] = {"train": 0.8, "dev": 0.1, "test": 0.1}
# Bumped whenever the same (n, seed) would render a different corpus, so cached corpora are rebuilt.
# 2: the training sentences cover every word of the held-out sentences.
CORPUS_VERSION = 2
# Tasks the corpus draws per group (audio_qa is for user data only).
CORPUS_TASKS: dict[str, tuple[str, ...]] = {
    "semantic": ("transcribe", "digit", "keyword"),
    "paralinguistic": ("gender", "speaker", "accent", "rate", "pitch", "style"),
    "sound": ("sound_event",),
    "music": ("instrument", "mode", "tempo"),
    "scene": ("scene",),
}
# Tasks the corpus makes only when asked (``build_corpus(extra_tasks=...)``), with the group whose clips they
# share: the default mix, and so the demo's corpus, stays byte-identical.
OPTIONAL_TASKS: dict[str, str] = {"arithmetic": "semantic"}
# Scene compositions (bit 0 speech, 1 music, 2 event) and how often the scene task draws each: mostly mixtures.
SCENE_WEIGHTS: dict[int, float] = {1: 0.1, 2: 0.1, 4: 0.1, 3: 0.2, 5: 0.2, 6: 0.2, 7: 0.1}
# Pure clips made for the other groups: speech for semantic and paralinguistic tasks.
GROUP_COMPONENTS: dict[str, int] = {"semantic": 1, "paralinguistic": 1, "music": 2, "sound": 4}
SNR_DB: tuple[int, ...] = (0, 5, 10, 15)
# Tasks where a whispered/croaked voice is allowed (gender, speaker, pitch and accent stay with the clean voice).
STYLE_TASKS = ("transcribe", "digit", "keyword", "arithmetic", "rate", "style")

assert set(EVENTS) == set(SOUND_EVENTS) and set(TIMBRES) == set(INSTRUMENTS), "tasks label sets out of sync"
assert set(CORPUS_TASKS) == set(TASK_GROUPS)


@dataclass
class ClipPlan:
    """Everything needed to render one clip (picklable; rendered in a worker)."""

    index: int
    key: str
    split: str
    task: str
    instruction: str
    answer: str
    attributes: dict[str, str]
    audio: str  # relative to the corpus folder
    seed: int
    speech: SpeechSpec | None = None
    music: MusicSpec | None = None
    event: str | None = None
    event_duration: float = 0.0
    snr_db: float | None = None
    lead: float = 0.0  # seconds of silence before speech
    transcript: str | None = None


@dataclass
class CorpusSummary:
    """What ``build_corpus`` made. ``counts[split]['task'|attribute][value] -> clips``."""

    out_dir: str
    n: int
    seed: int
    counts: dict[str, dict[str, dict[str, int]]]
    held_out_speakers: list[str]
    held_out_sentences: list[str]
    seconds: float
    clips_per_second: float
    cpu_ms_per_clip: float  # rendering CPU time per clip, summed over workers (independent of machine load)
    total_audio_seconds: float
    manifests: dict[str, str] = field(default_factory=dict)
    splits: dict[str, float] = field(default_factory=lambda: dict(SPLITS))
    version: int = 0
    extra_tasks: list[str] = field(default_factory=list)


def _pick(rng: np.random.Generator, options) -> object:
    return options[int(rng.integers(len(options)))]


def _uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def corpus_tasks(extra_tasks: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """The tasks each group draws: :data:`CORPUS_TASKS` plus the requested :data:`OPTIONAL_TASKS`."""
    unknown = [t for t in extra_tasks if t not in OPTIONAL_TASKS]
    if unknown:
        raise ValueError(
            f"extra corpus task(s) {', '.join(unknown)} unknown; the corpus can add: {', '.join(OPTIONAL_TASKS)}"
        )
    return {
        g: tasks + tuple(t for t in extra_tasks if OPTIONAL_TASKS[t] == g)
        for g, tasks in CORPUS_TASKS.items()
    }


def _assign(
    n: int,
    seed: int,
    fractions: Mapping[str, float] = SPLITS,
    group_tasks: Mapping[str, tuple[str, ...]] = CORPUS_TASKS,
) -> tuple[list[str], list[str]]:
    """Exactly balanced split and task lists of length n (balanced groups, then tasks within each group)."""
    rng = np.random.default_rng([seed, 1 << 30])
    splits = []
    for name, frac in fractions.items():
        splits += [name] * int(round(frac * n))
    splits = (splits + ["train"] * n)[:n]
    splits = [splits[i] for i in rng.permutation(n)]
    groups = [TASK_GROUPS[i % len(TASK_GROUPS)] for i in rng.permutation(n)]
    tasks: list[str] = [""] * n
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    for g, idx in by_group.items():
        options = group_tasks[g]
        order = rng.permutation(len(idx))
        for rank, j in enumerate(order):
            tasks[idx[j]] = options[rank % len(options)]
    return splits, tasks


def _sentence(rng: np.random.Generator, split: str, attrs: dict[str, str]) -> str:
    sentences = HELD_OUT_SENTENCES if split == "test" else TRAIN_SENTENCES
    sid = int(rng.integers(len(sentences)))
    attrs["sentence_id"] = f"{'heldout' if split == 'test' else 'train'}-{sid:02d}"
    return sentences[sid]


def _digit(rng: np.random.Generator, split: str, attrs: dict[str, str]) -> str:
    attrs["digit"] = word = str(_pick(rng, DIGITS))
    return str(_pick(rng, DIGIT_CARRIERS)).format(w=word)


def _keyword(rng: np.random.Generator, split: str, attrs: dict[str, str]) -> str:
    attrs["keyword"] = word = str(_pick(rng, KEYWORDS))
    return str(_pick(rng, KEYWORD_CARRIERS)).format(w=word)


def _arithmetic(rng: np.random.Generator, split: str, attrs: dict[str, str]) -> str:
    """A sum or difference of two digits whose result is a digit: 55 sums and 55 differences, every one in every
    split (the words are the question; held-out voices, not held-out sums, make the test split new)."""
    op = str(_pick(rng, ARITHMETIC_OPERATORS))
    result = int(rng.integers(10))
    a = int(rng.integers(result + 1)) if op == "plus" else int(rng.integers(result, 10))
    b = result - a if op == "plus" else a - result
    attrs |= {"arithmetic": DIGITS[result], "operator": op, "expression": f"{DIGITS[a]} {op} {DIGITS[b]}"}
    return str(_pick(rng, ARITHMETIC_CARRIERS)).format(a=DIGITS[a], op=op, b=DIGITS[b])


# What a clip says, by kind: each draws its words (and records what they are in ``attrs``) from the clip's rng.
CONTENT_PLANNERS = {"sentence": _sentence, "digit": _digit, "keyword": _keyword, "arithmetic": _arithmetic}
# The content a semantic task's clip carries (other speech tasks draw one of the first three).
TASK_CONTENT = {"transcribe": "sentence", "digit": "digit", "keyword": "keyword", "arithmetic": "arithmetic"}


def _plan_speech(
    rng: np.random.Generator, task: str, split: str, attrs: dict[str, str]
) -> tuple[SpeechSpec, str]:
    """Draw voice, content, rate, pitch, loudness and style; fill ``attrs``; return the spec and transcript."""
    speakers: tuple[Speaker, ...] = (
        TRAIN_SPEAKERS if (split != "test" or task == "speaker") else HELD_OUT_SPEAKERS
    )
    speaker = speakers[int(rng.integers(len(speakers)))]
    content = TASK_CONTENT.get(task)
    if content is None:  # a paralinguistic question about speech: any of the default contents
        content = str(_pick(rng, ("sentence", "sentence", "sentence", "digit", "keyword")))
    text = CONTENT_PLANNERS[content](rng, split, attrs)
    if task == "style":
        style = str(_pick(rng, STYLES))
    elif task in STYLE_TASKS:
        style = str(_pick(rng, ("normal",) * 8 + ("whisper", "croak")))
    else:
        style = "normal"
    rate, pitch, loudness = (str(_pick(rng, tuple(d))) for d in (RATE_WPM, PITCH_LEVEL, LOUDNESS_AMP))
    spec = SpeechSpec(
        text=text,
        voice=speaker.voice
        if style == "normal"
        else f"{ACCENT_VOICES[speaker.accent]}+{STYLE_VARIANTS[style]}",
        rate_wpm=_uniform_int(rng, RATE_WPM[rate]),
        pitch=_uniform_int(rng, PITCH_LEVEL[pitch]),
        amplitude=_uniform_int(rng, LOUDNESS_AMP[loudness]),
    )
    attrs |= {"content": content, "accent": speaker.accent, "style": style, "rate": rate, "pitch": pitch}
    attrs |= {"loudness": loudness, "rate_wpm": str(spec.rate_wpm), "pitch_value": str(spec.pitch)}
    attrs |= {"voice_split": "held_out" if speaker in HELD_OUT_SPEAKERS else "train"}
    if style == "normal":  # a whisper/croak variant replaces the speaker's timbre: no speaker identity then
        attrs |= {"speaker": speaker.name, "gender": speaker.gender, "age": speaker.age}
    else:
        attrs |= {"gender": STYLE_GENDER}
    return spec, text


def _plan_music(rng: np.random.Generator, seed: int, duration: float, attrs: dict[str, str]) -> MusicSpec:
    tempo = str(_pick(rng, TEMPOS))
    spec = MusicSpec(
        instrument=str(_pick(rng, INSTRUMENTS)),
        root=int(rng.integers(55, 67)),
        mode=str(_pick(rng, MODES)),
        bpm=float(_uniform_int(rng, TEMPO_BPM[tempo])),
        texture=str(_pick(rng, TEXTURES)),
        progression=PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
        duration=duration,
        seed=seed,
    )
    attrs |= {"instrument": spec.instrument, "mode": spec.mode, "key": spec.key, "tempo": tempo}
    attrs |= {"bpm": str(int(spec.bpm)), "texture": spec.texture}
    return spec


def plan_clip(index: int, seed: int, split: str, task: str) -> ClipPlan:
    """The full, deterministic description of clip ``index`` (no audio yet)."""
    rng = np.random.default_rng([seed, index])
    key = f"{split}-{index:06d}"
    mask = GROUP_COMPONENTS.get(TASKS[task].group)
    if mask is None:  # the scene group draws a composition
        masks = list(SCENE_WEIGHTS)
        probs = np.array([SCENE_WEIGHTS[m] for m in masks])
        mask = masks[int(rng.choice(len(masks), p=probs / probs.sum()))]
    components = [c for i, c in enumerate(SCENE_COMPONENTS) if mask >> i & 1]
    category = {1: "speech", 2: "music", 4: "sound"}.get(mask, "mixture")
    attrs = {"category": category, "components": " and ".join(components), "split": split}
    plan = ClipPlan(
        index, key, split, task, "", "", attrs, f"audio/{split}/{key}.wav", seed=int(rng.integers(2**31))
    )
    duration = float(np.round(rng.uniform(MIN_DURATION, MAX_DURATION), 2))
    if "speech" in components:
        plan.speech, plan.transcript = _plan_speech(rng, task, split, attrs)
        plan.lead = float(np.round(rng.uniform(0.05, 0.3), 3))
    if "music" in components:
        plan.music = _plan_music(rng, plan.seed, duration, attrs)
    if "event" in components:
        attrs["event"] = plan.event = str(_pick(rng, SOUND_EVENTS))
        plan.event_duration = duration
    if len(components) > 1:
        plan.snr_db = float(_pick(rng, SNR_DB))
        attrs["snr_db"] = str(int(plan.snr_db))
    task_obj = TASKS[task]
    plan.instruction = task_obj.instruction(rng)
    answer_attr = {"transcribe": None, "sound_event": "event", "scene": "components"}.get(task, task)
    plan.answer = plan.transcript if answer_attr is None else attrs[answer_attr]
    plan.attributes = attrs
    return plan


# Text-only items are planned at indices far past any corpus's clips, so their words are new draws, not copies
# of a clip's (the clip at index i is planned from the rng [seed, i]).
TEXT_ONLY_FIRST_INDEX = 1 << 40
TEXT_ONLY_AUDIO = "(text only)"  # the audio field of a text-only record: there is no file


def plan_text_items(seed: int, tasks: tuple[str, ...], per_task: int) -> list[AudioRecord]:
    """``per_task`` text-only training items of each speech task in ``tasks`` (words, question and answer as the
    corpus's own planners draw them for the train split, held-out sentences never): what a text LLM is pretrained
    on. No audio is rendered; ``audio`` is :data:`TEXT_ONLY_AUDIO` and the manifest must be read without file
    checks."""
    records = []
    for t, task in enumerate(tasks):
        if TASK_CONTENT.get(task) is None:
            raise ValueError(
                f"task {task!r} has no spoken content to plan text for; choose from {sorted(TASK_CONTENT)}"
            )
        for j in range(per_task):
            plan = plan_clip(TEXT_ONLY_FIRST_INDEX + t * per_task + j, seed, "train", task)
            records.append(AudioRecord(key=f"text-{task}-{j:06d}", audio=TEXT_ONLY_AUDIO, task=task,
                                       instruction=plan.instruction, answer=plan.answer,
                                       attributes=plan.attributes, transcript=plan.transcript))  # fmt: skip
    return records


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) + 1e-12


def render_clip(plan: ClipPlan, out_dir: str) -> tuple[int, int]:
    """Render and write one clip; returns ``(index, samples)``. Speech is padded to >= 1 s, never cut."""
    sr = SAMPLING_RATE
    rng = np.random.default_rng(plan.seed)
    foreground: np.ndarray | None = None
    backgrounds: list[np.ndarray] = []
    if plan.speech is not None:
        speech = synthesize(plan.speech, sr)
        lead, tail = int(plan.lead * sr), int(0.1 * sr)
        if lead + len(speech) + tail > MAX_DURATION * sr:  # a slow long sentence: drop the pauses, not words
            lead = tail = 0
        length = max(int(MIN_DURATION * sr), lead + len(speech) + tail)
        foreground = np.zeros(length, dtype=np.float32)
        foreground[lead : lead + len(speech)] = speech
    # Backgrounds of a speech mixture are rendered to the speech's length (no loop seams, no wasted samples).
    fit = None if foreground is None else len(foreground) / sr
    if plan.music is not None:
        music = render_music(plan.music if fit is None else dataclasses.replace(plan.music, duration=fit), sr)
        if foreground is None:
            foreground = music
        else:
            backgrounds.append(music)
    if plan.event is not None:
        backgrounds.append(render_event(plan.event, plan.event_duration if fit is None else fit, rng, sr))
    if foreground is None:
        foreground, backgrounds = backgrounds[0], backgrounds[1:]
    mix = foreground.astype(np.float32).copy()
    for bg in backgrounds:
        # Fit the background to the foreground's length, then scale it to the target SNR (foreground / background).
        bg = np.resize(bg, len(mix))
        gain = np.sqrt(_power(foreground) / _power(bg) / 10 ** (plan.snr_db / 10))
        mix += gain * bg
    peak = float(np.abs(mix).max())
    if peak > 0.99:  # keep relative loudness labels meaningful: only attenuate when the sum would clip
        mix *= 0.99 / peak
    save_audio(Path(out_dir) / plan.audio, mix, sr)
    return plan.index, len(mix)


def _render_star(args: tuple[ClipPlan, str]) -> tuple[int, int, float]:
    start = cpu_seconds()
    index, samples = render_clip(*args)
    return index, samples, cpu_seconds() - start


def _prepare_out_dir(out: Path) -> None:
    """Refuse to write into a non-empty folder that is not a previous corpus (it may hold the user's data)."""
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").exists():
        raise FileExistsError(
            f"{out} is not empty and holds no corpus (summary.json); choose an empty --out folder"
        )
    if (out / "audio").exists():
        shutil.rmtree(out / "audio")
    for split in SPLITS:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)


def _counts(records: list[AudioRecord]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        table["task"][r.task] += 1
        table["group"][TASKS[r.task].group] += 1
        for name, value in r.attributes.items():
            if name not in ("rate_wpm", "pitch_value", "bpm", "split"):  # numeric details: too many values
                table[name][value] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}


def _write_summary(summary: CorpusSummary, out: Path) -> None:
    data = dataclasses.asdict(summary)
    (out / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    splits = list(summary.counts)
    lines = [
        "# audiomoe built-in corpus",
        "",
        f"n={summary.n} clips, seed={summary.seed}, {summary.total_audio_seconds / 3600:.2f} h of 16 kHz audio, "
        f"built in {summary.seconds:.1f} s ({summary.clips_per_second:.0f} clips/s, "
        f"{summary.cpu_ms_per_clip:.1f} ms CPU per clip).",
        "",
        f"Held-out voices (test only): {', '.join(summary.held_out_speakers)}.",
        f"Held-out sentences (test only): {'; '.join(summary.held_out_sentences)}.",
        "",
        "| attribute | value | " + " | ".join(splits) + " |",
        "|---|---|" + "---|" * len(splits),
    ]
    names = sorted({name for c in summary.counts.values() for name in c})
    for name in names:
        values = sorted({v for c in summary.counts.values() for v in c.get(name, {})})
        for value in values:
            row = [str(summary.counts[s].get(name, {}).get(value, 0)) for s in splits]
            lines.append(f"| {name} | {value} | " + " | ".join(row) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def build_corpus(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    workers: int | None = None,
    splits: Mapping[str, float] | None = None,
    extra_tasks: tuple[str, ...] = (),
) -> CorpusSummary:
    """Make ``n`` clips under ``out_dir`` (see the module docstring); returns the summary that was written.

    ``workers``: processes (default: all CPUs). ``splits``: share of each of train / dev / test (default
    :data:`SPLITS`). ``extra_tasks``: names in :data:`OPTIONAL_TASKS` added to their group's draw (the group's
    share of clips is unchanged, shared by more tasks). Raises SynthesisError (a ValueError) when espeak-ng is
    missing.
    """
    if n < len(TASK_GROUPS):
        raise ValueError(f"--n must be at least {len(TASK_GROUPS)} (one clip per task group), got {n}")
    fractions = dict(SPLITS if splits is None else splits)
    if (
        set(fractions) != set(SPLITS)
        or any(f < 0 for f in fractions.values())
        or abs(sum(fractions.values()) - 1) > 1e-6
    ):
        raise ValueError(f"splits must give train, dev and test shares >= 0 that sum to 1, got {fractions}")
    extra_tasks = tuple(dict.fromkeys(extra_tasks))
    group_tasks = corpus_tasks(extra_tasks)
    require_espeak()
    out = Path(out_dir)
    _prepare_out_dir(out)
    start = time.perf_counter()
    split_of, tasks = _assign(n, seed, fractions, group_tasks)
    plans = [plan_clip(i, seed, split_of[i], tasks[i]) for i in range(n)]
    workers = max(1, workers or os.cpu_count() or 1)
    samples: dict[int, int] = {}
    # Grouped by voice so each worker's voice server is reused (results are keyed by index: order is free).
    jobs = [(p, str(out)) for p in sorted(plans, key=lambda p: p.speech.voice if p.speech else "")]
    # Workers come from a forkserver that imported only this module: the speech backend forks once per utterance,
    # and forking a lean process is cheap, whereas the caller may hold torch and its threads.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    # An executor, not mp.Pool: a worker that dies (killed, out of memory, or a caller's script re-run by the
    # worker on import) breaks the executor and ends the build with a message; Pool replaced the worker and
    # waited for its lost chunk forever.
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_render_star, jobs, chunksize=8))
    except BrokenProcessPool as err:
        raise ChildProcessError(
            f"a corpus worker process died before finishing ({err}); if it was not killed or out of memory, "
            "the script that builds the corpus runs again in each worker: put the call under "
            '`if __name__ == "__main__":`'
        ) from None
    samples = {index: count for index, count, _ in results}
    cpu_ms = 1000 * sum(cpu for _, _, cpu in results) / n
    records: dict[str, list[AudioRecord]] = {s: [] for s in SPLITS}
    for p in plans:
        records[p.split].append(
            AudioRecord(
                key=p.key,
                audio=p.audio,
                task=p.task,
                instruction=p.instruction,
                answer=p.answer,
                attributes=p.attributes,
                duration=round(samples[p.index] / SAMPLING_RATE, 4),
                transcript=p.transcript,
            )
        )
    manifests = {}
    for split, recs in records.items():
        manifests[split] = str(out / f"{split}.jsonl")
        write_manifest(recs, manifests[split], relative=False)
    seconds = time.perf_counter() - start
    summary = CorpusSummary(
        out_dir=str(out),
        n=n,
        seed=seed,
        splits=fractions,
        version=CORPUS_VERSION,
        extra_tasks=list(extra_tasks),
        counts={s: _counts(r) for s, r in records.items()},
        held_out_speakers=[f"{s.name} ({s.gender}, {s.accent})" for s in HELD_OUT_SPEAKERS],
        held_out_sentences=list(HELD_OUT_SENTENCES),
        seconds=round(seconds, 3),
        clips_per_second=round(n / seconds, 1),
        cpu_ms_per_clip=round(cpu_ms, 2),
        total_audio_seconds=round(sum(samples.values()) / SAMPLING_RATE, 1),
        manifests=manifests,
    )
    _write_summary(summary, out)
    return summary
