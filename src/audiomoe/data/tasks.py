"""Task registry: what a record asks about its audio, how the answer is written, normalised and scored.

``TASKS[name]`` is a :class:`Task`. Every task belongs to one of five groups (``TASK_GROUPS``) that mirror the
heterogeneity the paper is about: what is said (semantic), who says it and how (paralinguistic), environmental
sound, music, and the composition of the scene.

A task carries several instruction paraphrases (training draws one per record so a model cannot key on the
wording), an answer format, a ``normalize`` used both when writing answers and when scoring them, the name of its
metric (``"wer"`` for transcription, ``"accuracy"`` for closed-label and short-answer tasks; any name registered
with :func:`audiomoe.evaluation.metrics.register_metric`, checked when the task is scored) and, where the label
set is closed, ``labels``.

Add a task with :func:`register_task`; nothing else needs to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from audiomoe.config import did_you_mean
from audiomoe.text import normalize_text

TASK_GROUPS: tuple[str, ...] = ("semantic", "paralinguistic", "sound", "music", "scene")
SCENE_COMPONENTS: tuple[str, ...] = ("speech", "music", "event")


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


@dataclass(frozen=True)
class Task:
    """One task of the registry.

    Attributes:
        name: registry key, also the ``task`` field of a manifest record.
        group: one of ``TASK_GROUPS``.
        instructions: paraphrases of the question (at least two).
        answer_format: one line telling a human (and the docs) what an answer looks like.
        metric: a registered metric (``"wer"``, ``"accuracy"``, ...); the metric registry is its only list.
        labels: the closed label set, or ``()`` for open answers (transcripts, free QA).
        synonyms: extra spellings mapped to a label by ``normalize``.
    """

    name: str
    group: str
    instructions: tuple[str, ...]
    answer_format: str
    metric: str
    labels: tuple[str, ...] = ()
    synonyms: dict[str, str] = field(default_factory=dict)
    normalizer: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        if self.group not in TASK_GROUPS:
            raise ValueError(f"task {self.name!r}: group {self.group!r} is not one of {TASK_GROUPS}")
        if not self.metric:
            raise ValueError(
                f"task {self.name!r}: give a metric (a name registered in audiomoe.evaluation.metrics)"
            )
        if len(self.instructions) < 2:
            raise ValueError(f"task {self.name!r}: give at least two instruction paraphrases")

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

    def instruction(self, rng: np.random.Generator | None = None) -> str:
        """One paraphrase: the first (canonical) one without ``rng``, a random one with it."""
        if rng is None:
            return self.instructions[0]
        return self.instructions[int(rng.integers(len(self.instructions)))]

    def is_correct(self, prediction: str, reference: str) -> bool:
        """Exact match after normalisation (the accuracy metric)."""
        return self.normalize(prediction) == self.normalize(reference)


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to ``TASKS``; a name may be registered once."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """``TASKS[name]`` with an error that lists the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        hint = did_you_mean(name, TASKS)
        raise ValueError(f"unknown task {name!r}{hint}; known tasks: {', '.join(sorted(TASKS))}") from None


def find_task_by_instruction(instruction: str) -> Task | None:
    """The task whose paraphrase list contains ``instruction`` (after normalisation), else None."""
    flat = normalize_text(instruction)
    for task in TASKS.values():
        if any(normalize_text(p) == flat for p in task.instructions):
            return task
    return None


# Label sets of the built-in corpus (audiomoe.data.corpus draws its attributes from these).
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("american", "british", "scottish", "caribbean", "new york", "lancaster", "west midlands")
RATES = ("slow", "normal", "fast")
PITCHES = ("low", "normal", "high")
STYLES = ("normal", "whisper", "croak")
SOUND_EVENTS = ("siren", "alarm", "knocking", "engine", "rain", "wind", "white noise", "pink noise")
INSTRUMENTS = ("piano", "organ", "flute", "strings", "clarinet", "bell")
MODES = ("major", "minor")
TEMPOS = ("slow", "medium", "fast")
SCENES = tuple(
    " and ".join(c for i, c in enumerate(SCENE_COMPONENTS) if mask >> i & 1) for mask in range(1, 8)
)
# Speaker identities are names of the built-in voices (see audiomoe.data.speech.SPEAKERS); kept here so the
# task registry has no import of the synthesiser.
SPEAKER_NAMES = (
    "alice",
    "bruce",
    "carol",
    "dave",
    "erin",
    "frank",
    "gina",
    "hank",
    "iris",
    "jack",
    "kate",
    "liam",
)

register_task(
    Task(
        "transcribe",
        "semantic",
        (
            "Transcribe the speech.",
            "What is said in this recording?",
            "Write down the spoken words.",
            "Please transcribe this audio.",
        ),
        "the spoken words in lower case",
        "wer",
    )
)
register_task(
    Task(
        "digit",
        "semantic",
        ("Which digit is spoken?", "What number does the speaker say?", "Name the digit you hear."),
        "one digit as a word (zero..nine)",
        "accuracy",
        DIGITS,
        {str(i): d for i, d in enumerate(DIGITS)},
    )
)
register_task(
    Task(
        "keyword",
        "semantic",
        ("Which command word is spoken?", "What keyword does the speaker say?", "Name the spoken command."),
        "one keyword",
        "accuracy",
        KEYWORDS,
    )
)
register_task(
    Task(
        "audio_qa",
        "semantic",
        ("Answer the question about the audio.", "Listen and answer."),
        "free short answer (exact match after normalisation); used for messages-style data without a task",
        "accuracy",
    )
)
register_task(
    Task(
        "gender",
        "paralinguistic",
        ("Is the speaker male or female?", "What is the gender of the speaker?", "Male or female voice?"),
        "male | female",
        "accuracy",
        ("male", "female"),
        {"man": "male", "woman": "female", "boy": "male", "girl": "female"},
    )
)
register_task(
    Task(
        "speaker",
        "paralinguistic",
        ("Who is speaking?", "Identify the speaker.", "Which speaker is this?"),
        "speaker name from the closed set",
        "accuracy",
        SPEAKER_NAMES,
    )
)
register_task(
    Task(
        "accent",
        "paralinguistic",
        ("What accent does the speaker have?", "Identify the accent.", "Where is the speaker's accent from?"),
        "accent name",
        "accuracy",
        ACCENTS,
        {"us": "american", "uk": "british", "english": "british", "nyc": "new york", "scotland": "scottish"},
    )
)
register_task(
    Task(
        "rate",
        "paralinguistic",
        ("Is the speech slow, normal or fast?", "How fast does the speaker talk?", "Speaking rate?"),
        "slow | normal | fast",
        "accuracy",
        RATES,
        {"quick": "fast", "medium": "normal"},
    )
)
register_task(
    Task(
        "pitch",
        "paralinguistic",
        ("Is the voice pitch low, normal or high?", "How high is the speaker's voice?", "Pitch level?"),
        "low | normal | high",
        "accuracy",
        PITCHES,
        {"medium": "normal"},
    )
)
register_task(
    Task(
        "style",
        "paralinguistic",
        (
            "What is the voice style?",
            "Is the speaker whispering, croaking or speaking normally?",
            "Voice quality?",
        ),
        "normal | whisper | croak",
        "accuracy",
        STYLES,
        {"whispering": "whisper", "whispered": "whisper", "croaky": "croak", "croaking": "croak"},
    )
)
register_task(
    Task(
        "sound_event",
        "sound",
        ("What sound is this?", "Which sound event do you hear?", "Name the sound."),
        "sound event class",
        "accuracy",
        SOUND_EVENTS,
        {"knock": "knocking", "beeping": "alarm", "beep": "alarm", "motor": "engine", "noise": "white noise"},
    )
)
register_task(
    Task(
        "instrument",
        "music",
        ("Which instrument is playing?", "Name the instrument.", "What instrument do you hear?"),
        "instrument name",
        "accuracy",
        INSTRUMENTS,
        {"violin": "strings", "string": "strings", "bells": "bell"},
    )
)
register_task(
    Task(
        "mode",
        "music",
        ("Is the music in a major or minor key?", "Major or minor?", "What is the mode of the music?"),
        "major | minor",
        "accuracy",
        MODES,
    )
)
register_task(
    Task(
        "tempo",
        "music",
        ("Is the tempo slow, medium or fast?", "How fast is the music?", "Tempo class?"),
        "slow | medium | fast",
        "accuracy",
        TEMPOS,
        {"normal": "medium", "moderate": "medium", "quick": "fast"},
    )
)
register_task(
    Task(
        "scene",
        "scene",
        (
            "Which of speech, music and sound events are present?",
            "What does this recording contain: speech, music, events?",
            "Describe the scene composition.",
        ),
        'present components in the order speech, music, event, joined by " and "',
        "accuracy",
        SCENES,
        normalizer=normalize_scene,
    )
)
