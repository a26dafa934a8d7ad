"""Task registry: what a record asks about its audio, how the answer is written, normalised and scored.

``TASKS[name]`` is a :class:`Task`. Tasks are data: the built-in ones are ``tasks.yaml`` beside this module, read
at import, and a user declares theirs in a file of the same format (``data.tasks: [FILE]`` for training,
``--tasks FILE`` for ``data validate``, ``eval``, ``analyze``), loaded by :func:`load_tasks_file`:

    tasks:
      emotion:
        group: paralinguistic           # a built-in group (TASK_GROUPS) or a new one
        metric: accuracy                # any name in audiomoe.evaluation.metrics
        labels: [anger, happiness, sadness, neutral]
        synonyms: {angry: anger, happy: happiness, sad: sadness}
        instructions:
          - What emotion does the speaker express?
          - How does the speaker feel?

A task carries instruction paraphrases (training draws one per record so a model cannot key on the wording), an
answer format, a ``normalize`` used both when writing answers and when scoring them, the name of its metric
(checked when the task is scored: ``data`` sits below ``evaluation``), where the label set is closed ``labels``,
and optionally a ``language`` that chooses the text normaliser of error-rate metrics.

A record whose task is not registered is an **open task** (:func:`get_task` never fails): group ``open``, scored
with the metric the record declares (``"metric"`` in a native record, see :func:`declare_open_task`) or
``exact_match``. ``register_task`` adds one from Python (a plugin); nothing else needs to change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from audiomoe.config import did_you_mean
from audiomoe.text import normalize_text

# The built-in groups; a tasks file may name new ones (a group is whatever its tasks say).
TASK_GROUPS: tuple[str, ...] = ("semantic", "paralinguistic", "sound", "music", "scene")
SCENE_COMPONENTS: tuple[str, ...] = ("speech", "music", "event")
OPEN_GROUP = "open"
OPEN_METRIC = "exact_match"
OPEN_INSTRUCTIONS = ("Answer the question about the audio.", "Listen and answer.")
BUILTIN_TASKS_FILE = Path(__file__).with_name("tasks.yaml")
TASKS_FILE_NAME = "tasks.yaml"  # what a run and a model directory hold: the tasks they were trained with


class TasksFileError(ValueError):
    """A tasks file is unusable; the message is ``FILE: tasks.NAME.KEY: reason; fix``."""


def _label_normalizer(labels: Sequence[str], synonyms: dict[str, str]) -> Callable[[str], str]:
    """Map free text to a label: exact label, then synonym, then the first label word found in the text."""
    canon = {normalize_text(label): label for label in labels}
    syn = {normalize_text(k): v for k, v in synonyms.items()}

    def normalize(text: str) -> str:
        flat = normalize_text(text)
        if flat in canon:
            return canon[flat]
        if flat in syn:
            return syn[flat]
        # Short generated answers such as "the speaker is female" still score: look for a label as a word.
        words = flat.split()
        for i in range(len(words)):
            for j in range(len(words), i, -1):
                span = " ".join(words[i:j])
                if span in canon:
                    return canon[span]
                if span in syn:
                    return syn[span]
        return flat

    return normalize


def normalize_scene(text: str) -> str:
    """Scene answers are sets: "music and speech", "Speech, music." -> "speech and music" (fixed order)."""
    flat = normalize_text(text)
    words = set(flat.split())
    aliases = {"speech": "speech", "voice": "speech", "talking": "speech", "music": "music", "event": "event"}
    aliases |= {"sound": "event", "sounds": "event", "events": "event", "noise": "event"}
    found = {aliases[w] for w in words if w in aliases}
    if not found:
        return flat
    return " and ".join(c for c in SCENE_COMPONENTS if c in found)


# Answer normalisers a tasks file may name (``normalizer: scene``); a plugin may add one.
NORMALIZERS: dict[str, Callable[[str], str]] = {"text": normalize_text, "scene": normalize_scene}


@dataclass(frozen=True)
class Task:
    """One task of the registry.

    Attributes:
        name: registry key, also the ``task`` field of a manifest record.
        group: a built-in group (``TASK_GROUPS``) or a new one; groups are averaged in reports.
        instructions: paraphrases of the question (at least one; more keep a model from keying on wording).
        answer_format: one line telling a human (and the docs) what an answer looks like.
        metric: a registered metric (``"wer"``, ``"accuracy"``, ...); the metric registry is its only list.
        labels: the closed label set, or ``()`` for open answers (transcripts, free QA).
        synonyms: extra spellings mapped to a label by ``normalize``.
        normalizer: answer normaliser replacing the label / text default.
        language: language code (``en``, ``zh``, ...) for error-rate normalisation; ``""`` = from the record.
    """

    name: str
    group: str
    instructions: tuple[str, ...]
    answer_format: str
    metric: str
    labels: tuple[str, ...] = ()
    synonyms: dict[str, str] = field(default_factory=dict)
    normalizer: Callable[[str], str] | None = None
    language: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.group, str) or not self.group.strip():
            raise ValueError(f"task {self.name!r}: give a group (one of {TASK_GROUPS} or a new name)")
        if not self.metric:
            raise ValueError(
                f"task {self.name!r}: give a metric (a name registered in audiomoe.evaluation.metrics)"
            )
        if not self.instructions or not all(isinstance(i, str) and i.strip() for i in self.instructions):
            raise ValueError(f"task {self.name!r}: give at least one instruction (non-empty text)")

    @property
    def choices(self) -> tuple[str, ...]:
        """The answers a model may give (the closed label set; empty for open answers)."""
        return self.labels

    def normalize(self, text: str) -> str:
        """Canonical form of an answer (label for closed tasks, normalised words otherwise)."""
        if self.normalizer is not None:
            return self.normalizer(text)
        if self.labels:
            return _label_normalizer(self.labels, self.synonyms)(text)
        return normalize_text(text)

    @property
    def scoring_normalizer(self) -> Callable[[str], str] | None:
        """The answer normaliser metrics apply: the task's own (named normaliser, labels), or None where plain
        text normalisation applies (the metric then normalises for the item's language)."""
        if self.normalizer is not None:
            return self.normalizer
        if self.labels:
            return _label_normalizer(self.labels, self.synonyms)
        return None

    def instruction(self, rng: np.random.Generator | None = None) -> str:
        """One paraphrase: the first (canonical) one without ``rng``, a random one with it."""
        if rng is None:
            return self.instructions[0]
        return self.instructions[int(rng.integers(len(self.instructions)))]

    def is_correct(self, prediction: str, reference: str) -> bool:
        """Exact match after normalisation (the accuracy metric)."""
        return self.normalize(prediction) == self.normalize(reference)


TASKS: dict[str, Task] = {}
# Tasks that records named without anyone registering them, with the metric the record declared.
OPEN_TASKS: dict[str, Task] = {}
# Tasks registered from a user's tasks file (what a run saves; a plugin's tasks come back with the plugin).
DECLARED: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to ``TASKS``; a name may be registered once."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    OPEN_TASKS.pop(task.name, None)
    return task


def open_task(name: str, metric: str = OPEN_METRIC) -> Task:
    """The task of a record whose task nobody declared: free answers scored with ``metric``."""
    return Task(name, OPEN_GROUP, OPEN_INSTRUCTIONS, "free answer (not declared in a tasks file)", metric)


def declare_open_task(name: str, metric: str | None) -> Task:
    """The task a record names: the registered one, else an open task with the record's ``metric`` (the first
    declaration wins; a different metric for the same open task is an error)."""
    if name in TASKS:
        return TASKS[name]
    known = OPEN_TASKS.get(name)
    if known is None:
        known = OPEN_TASKS[name] = open_task(name, metric or OPEN_METRIC)
    elif metric and metric != known.metric:
        raise ValueError(
            f"task {name!r} is scored with {known.metric!r} by an earlier record, this one says {metric!r}; "
            "declare the task once in a tasks file (--tasks FILE)"
        )
    return known


def get_task(name: str) -> Task:
    """``TASKS[name]``; a name nobody registered is an open task (never an error)."""
    if name in TASKS:
        return TASKS[name]
    return OPEN_TASKS.get(name) or open_task(name)


def unknown_task_note(name: str) -> str:
    """One line for ``data validate``: a task that is not declared is scored as an open task."""
    hint = did_you_mean(name, TASKS)
    metric = get_task(name).metric
    return (
        f"task {name!r} is not declared{hint}: it is scored as an open task with {metric!r}; "
        "declare it in a tasks file (--tasks FILE) to give it labels and a metric"
    )


def find_task_by_instruction(instruction: str) -> Task | None:
    """The task whose paraphrase list contains ``instruction`` (after normalisation), else None."""
    flat = normalize_text(instruction)
    for task in TASKS.values():
        if any(normalize_text(p) == flat for p in task.instructions):
            return task
    return None


# ------------------------------------------------------------------------------------------- tasks files
TASK_KEYS = (
    "group",
    "metric",
    "answer_format",
    "instructions",
    "labels",
    "synonyms",
    "normalizer",
    "language",
)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise TasksFileError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def task_from_dict(name: str, entry: dict[str, Any], where: str) -> Task:
    """One tasks-file entry -> :class:`Task`; ``where`` (``FILE: tasks.NAME``) prefixes every error."""
    if not isinstance(entry, dict):
        raise TasksFileError(f"{where}: expected a mapping of {', '.join(TASK_KEYS)}, got {entry!r}")
    unknown = [k for k in entry if k not in TASK_KEYS]
    if unknown:
        hint = did_you_mean(unknown[0], TASK_KEYS)
        raise TasksFileError(f"{where}.{unknown[0]}: unknown key{hint}; the keys are {', '.join(TASK_KEYS)}")
    labels = _strings(entry.get("labels", []), f"{where}.labels")
    synonyms = entry.get("synonyms") or {}
    if not isinstance(synonyms, dict):
        raise TasksFileError(f"{where}.synonyms: expected a mapping of spelling: label, got {synonyms!r}")
    synonyms = {str(k): str(v) for k, v in synonyms.items()}
    stray = [v for v in synonyms.values() if labels and v not in labels]
    if stray:
        raise TasksFileError(f"{where}.synonyms: {stray[0]!r} is not one of the labels {list(labels)}")
    normalizer = None
    if entry.get("normalizer"):
        key = str(entry["normalizer"])
        if key not in NORMALIZERS:
            hint = did_you_mean(key, NORMALIZERS)
            raise TasksFileError(
                f"{where}.normalizer: {key!r} is unknown{hint}; one of {sorted(NORMALIZERS)}"
            )
        normalizer = NORMALIZERS[key]
    if "metric" not in entry:
        raise TasksFileError(f"{where}: give a metric (accuracy for labels, wer for transcripts, ...)")
    instructions = _strings(entry.get("instructions", []), f"{where}.instructions")
    try:
        return Task(
            name=name,
            group=str(entry.get("group", OPEN_GROUP)),
            instructions=instructions,
            answer_format=str(
                entry.get("answer_format") or (" | ".join(labels) if labels else "free answer")
            ),
            metric=str(entry["metric"]),
            labels=labels,
            synonyms=synonyms,
            normalizer=normalizer,
            language=str(entry.get("language", "")),
        )
    except ValueError as err:
        raise TasksFileError(f"{where}: {err}") from None


def task_to_dict(task: Task) -> dict[str, Any]:
    """The tasks-file entry of ``task`` (inverse of :func:`task_from_dict`). A normaliser that is not a named
    one in ``NORMALIZERS`` (a plugin's callable) cannot be written: ValueError."""
    entry: dict[str, Any] = {"group": task.group, "metric": task.metric, "answer_format": task.answer_format}
    entry["instructions"] = list(task.instructions)
    if task.labels:
        entry["labels"] = list(task.labels)
    if task.synonyms:
        entry["synonyms"] = dict(task.synonyms)
    if task.normalizer is not None:
        names = [k for k, fn in NORMALIZERS.items() if fn is task.normalizer]
        if not names:
            raise ValueError(
                f"task {task.name!r}: its normalizer is not in NORMALIZERS, so it cannot be saved"
            )
        entry["normalizer"] = names[0]
    if task.language:
        entry["language"] = task.language
    return entry


def read_tasks_file(path: str | Path) -> list[Task]:
    """The tasks declared in a YAML tasks file (``tasks:`` a mapping name -> entry, or a list of entries with
    ``name``). Raises :class:`TasksFileError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise TasksFileError(
            f"{path}: tasks file not found; give the path of a YAML file with a 'tasks:' mapping"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TasksFileError(
            f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)}); quote entries holding '?', ',' or ':'"
            " inside [a, b] lists, or write one '- entry' per line"
        ) from None
    entries = data.get("tasks") if isinstance(data, dict) else None
    if isinstance(entries, list):
        named = [e for e in entries if isinstance(e, dict) and e.get("name")]
        if len(named) != len(entries):
            raise TasksFileError(f"{path}: tasks: every list entry needs a 'name'")
        entries = {str(e["name"]): {k: v for k, v in e.items() if k != "name"} for e in named}
    if not isinstance(entries, dict) or not entries:
        raise TasksFileError(f"{path}: expected 'tasks:' with one entry per task (see docs/own-data.md)")
    return [task_from_dict(str(name), entry, f"{path}: tasks.{name}") for name, entry in entries.items()]


def _same(a: Task, b: Task) -> bool:
    return task_to_dict(a) == task_to_dict(b) if a.normalizer is b.normalizer else False


def add_tasks(tasks: Iterable[Task], where: str) -> list[Task]:
    """Register ``tasks``; one that is already registered identically is kept, a different definition under a
    registered name is an error naming ``where``."""
    added = []
    for task in tasks:
        known = TASKS.get(task.name)
        if known is None:
            register_task(task)
        elif not _same(known, task):
            raise TasksFileError(
                f"{where}: task {task.name!r} is already defined differently ({known.metric}, labels "
                f"{list(known.labels)} vs {task.metric}, {list(task.labels)}); rename it or load one definition"
            )
        added.append(TASKS[task.name])
    return added


def load_tasks_file(path: str | Path) -> list[Task]:
    """Read a tasks file and register its tasks (see :func:`add_tasks`); returns them."""
    tasks = add_tasks(read_tasks_file(path), str(path))
    for task in tasks:
        DECLARED.setdefault(task.name, task)
    return tasks


def load_tasks_files(paths: Iterable[str | Path]) -> list[Task]:
    return [task for path in paths for task in load_tasks_file(path)]


def write_tasks_file(tasks: Iterable[Task], path: str | Path) -> Path:
    """Write ``tasks`` in the tasks-file format (what a run and a model directory keep)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {task.name: task_to_dict(task) for task in tasks}
    path.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False, allow_unicode=True, width=110))
    return path


def saved_tasks(names: Iterable[str]) -> list[Task]:
    """The definitions to save with a run: those of ``names`` declared in tasks files, and open tasks with the
    metric their records named, in name order. (Built-in tasks are the package's; a plugin's come with it.)"""
    out = []
    for name in sorted(set(names)):
        task = get_task(name)
        if DECLARED.get(name) is task or (name in OPEN_TASKS and task.metric != OPEN_METRIC):
            out.append(task)
    return out


# The built-in tasks, one source of truth (tasks.yaml).
BUILTIN: dict[str, Task] = {t.name: register_task(t) for t in read_tasks_file(BUILTIN_TASKS_FILE)}

# Label sets of the built-in corpus (audiomoe.data.corpus draws its attributes from these).
DIGITS = TASKS["digit"].labels
KEYWORDS = TASKS["keyword"].labels
ACCENTS = TASKS["accent"].labels
RATES = TASKS["rate"].labels
PITCHES = TASKS["pitch"].labels
STYLES = TASKS["style"].labels
SOUND_EVENTS = TASKS["sound_event"].labels
INSTRUMENTS = TASKS["instrument"].labels
MODES = TASKS["mode"].labels
TEMPOS = TASKS["tempo"].labels
SCENES = TASKS["scene"].labels
# Speaker identities are names of the built-in voices (see audiomoe.data.speech.SPEAKERS).
SPEAKER_NAMES = TASKS["speaker"].labels
