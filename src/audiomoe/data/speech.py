"""Speech for the built-in corpus: espeak-ng voices with known speaker, gender, accent, age, rate, pitch, style.

Each :class:`Speaker` is an espeak-ng language voice (the accent) plus a voice variant (timbre, gender, age).
Twelve speakers are used for training; four more are held out and only appear in the test split (so gender,
accent, rate, pitch... are tested on unseen voices). Sentences are split the same way: ``HELD_OUT_SENTENCES``
appear only in test. Digits and keywords are closed sets and appear everywhere.

:func:`synthesize` returns 16 kHz float32 audio of a :class:`SpeechSpec` (the engine is in
:mod:`audiomoe.data.espeak`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audiomoe.data.audio import resample
from audiomoe.data.espeak import SpeechSpec, SynthesisError, cpu_seconds, require_espeak, synthesize_raw
from audiomoe.data.tasks import SPEAKER_NAMES

__all__ = ["SpeechSpec", "SynthesisError", "cpu_seconds", "require_espeak", "synthesize", "synthesize_raw"]

# accent label -> espeak-ng language voice
ACCENT_VOICES: dict[str, str] = {
    "american": "en-us",
    "british": "en",  # gmw/en is British English; libespeak-ng does not resolve the "en-gb" alias
    "scottish": "en-gb-scotland",
    "caribbean": "en-029",
    "new york": "en-us-nyc",
    "lancaster": "en-gb-x-gbclan",
    "west midlands": "en-gb-x-gbcwmd",
}


@dataclass(frozen=True)
class Speaker:
    """A built-in voice: ``espeak-ng -v {ACCENT_VOICES[accent]}+{variant}``."""

    name: str
    accent: str
    variant: str
    gender: str
    age: str = "adult"

    @property
    def voice(self) -> str:
        return f"{ACCENT_VOICES[self.accent]}+{self.variant}"


TRAIN_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("alice", "american", "f1", "female"),
    Speaker("bruce", "british", "m1", "male"),
    Speaker("carol", "scottish", "f2", "female"),
    Speaker("dave", "caribbean", "m2", "male"),
    Speaker("erin", "new york", "f3", "female"),
    Speaker("frank", "lancaster", "m3", "male"),
    Speaker("gina", "west midlands", "f4", "female"),
    Speaker("hank", "american", "m4", "male"),
    Speaker("iris", "british", "f5", "female"),
    Speaker("jack", "scottish", "m5", "male"),
    Speaker("kate", "caribbean", "grandma", "female", "old"),
    Speaker("liam", "new york", "grandpa", "male", "old"),
)
HELD_OUT_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("mona", "lancaster", "f2", "female"),
    Speaker("nate", "west midlands", "m6", "male"),
    Speaker("olga", "american", "f4", "female"),
    Speaker("pete", "british", "m7", "male"),
)
SPEAKERS: dict[str, Speaker] = {s.name: s for s in TRAIN_SPEAKERS + HELD_OUT_SPEAKERS}
assert tuple(s.name for s in TRAIN_SPEAKERS) == SPEAKER_NAMES, (
    "tasks.SPEAKER_NAMES must list the train speakers"
)

# Voice styles replace the timbre variant; espeak-ng's whisper and croak variants are male voices.
STYLE_VARIANTS: dict[str, str] = {"whisper": "whisper", "croak": "croak"}
STYLE_GENDER = "male"

# class -> (low, high) espeak-ng setting; classes are far apart so the label is audible. Pitch level is relative
# to the voice (espeak-ng -p shifts the voice's own range): a high male voice can be lower than a low female one.
RATE_WPM: dict[str, tuple[int, int]] = {"slow": (105, 125), "normal": (160, 180), "fast": (235, 265)}
PITCH_LEVEL: dict[str, tuple[int, int]] = {"low": (5, 20), "normal": (42, 58), "high": (80, 95)}
LOUDNESS_AMP: dict[str, tuple[int, int]] = {"quiet": (35, 50), "normal": (85, 105), "loud": (140, 160)}

TRAIN_SENTENCES: tuple[str, ...] = (
    "the cat sat on the mat",
    "she sells sea shells",
    "open the kitchen window",
    "the train leaves at noon",
    "my brother plays the drums",
    "please close the front door",
    "the sky is very blue",
    "we walked along the river",
    "bring me a glass of water",
    "the dog chased the ball",
    "turn off the bright lights",
    "it is raining again today",
    "the soup is too hot",
    "he reads a book at night",
    "our garden has red roses",
    "the meeting starts at nine",
    "a bird sang in the tree",
    "she painted the fence green",
    "the children laughed loudly",
    "put the keys on the table",
    "the shop closes early",
    "i like fresh bread",
    "the baby is sleeping",
    "call me after lunch",
    "the road was very long",
    "they built a small boat",
    "the coffee smells good",
    "wash your hands first",
    "the moon is bright tonight",
    "he forgot his umbrella",
    "the bus was late again",
    "a cold wind blew",
    "she found a silver coin",
    "the phone rang twice",
    "we need more paper",
    "the old clock stopped",
    "he fixed the broken chair",
    "the lake froze last winter",
    "pass the salt please",
    "the music was too loud",
    "my sister likes apples",
    "the film starts soon",
    "they sold their old car",
    "the room is quite warm",
    "a fox crossed the road",
    "the letter came today",
    "he runs every morning",
    "the bridge is very old",
)
# Training sentences made by a small grammar, so that transcription must be learnt word by word: with a few dozen
# fixed sentences a model learns to pick the nearest memorised sentence and fails on any new one (measured: WER
# 0.74 on the held-out sentences, every prediction a training sentence). The word lists cover every word of
# HELD_OUT_SENTENCES, so held-out sentences are new sentences, not new words (a toy corpus cannot teach words it
# never speaks); the held-out sentences themselves are never generated.
_NOUNS = (
    "cat", "dog", "lamp", "desk", "hat", "bed", "garden", "river", "sea", "window", "plane", "town", "door",
    "table", "book", "boat", "car", "chair", "clock", "tree", "road", "bridge", "shop", "room", "ball", "coin",
)  # fmt: skip
_SUBJECTS = ("she", "he", "we", "they", "my sister", "my brother", "the children", "the baby", "his friend")
_PAST_VERBS = ("bought", "found", "left", "painted", "fixed", "sold", "washed", "moved", "saw", "built")
_ADJECTIVES = (
    "new",
    "old",
    "red",
    "green",
    "blue",
    "small",
    "big",
    "warm",
    "cold",
    "bright",
    "quiet",
    "open",
)
_PLACES = ("on", "under", "over", "near", "by")
_TIMES = ("today", "at night", "at noon", "again", "outside", "every morning", "last winter")
_SEEN = ("ate dinner", "ate lunch", "ate apples", "walked home", "played ball", "left early")


def _grammar_sentences() -> tuple[str, ...]:
    """About 10,000 distinct sentences of 3-7 words from the word lists above, in a fixed shuffled order."""
    out = set()
    for n in _NOUNS:
        for adj in _ADJECTIVES:
            out.add(f"the {n} is {adj}")
            out.add(f"the {adj} {n} needs rain" if n in ("garden", "tree") else f"the {n} is very {adj}")
        for m in _NOUNS:
            if m != n:
                for place in _PLACES:
                    out.add(f"the {n} is {place} the {m}")
                out.add(f"a {n} runs to the {m}")
                out.add(f"his shoes are {_PLACES[len(m) % len(_PLACES)]} the {m}")
        for subj in _SUBJECTS:
            for verb in _PAST_VERBS:
                out.add(f"{subj} {verb} the {n}")
                out.add(f"{subj} {verb} a new {n}")
            out.add(f"{subj} left the {n} open")
        for t in _TIMES:
            out.add(f"the {n} was left {t}")
            out.add(f"a plane flew over the {n} {t}")
    for subj in _SUBJECTS:
        for act in _SEEN:
            for t in _TIMES:
                out.add(f"{subj} {act} {t}")
    out -= set(HELD_OUT_SENTENCES) | set(TRAIN_SENTENCES)  # never a held-out one, no duplicate of a fixed one
    order = np.random.default_rng(2601).permutation(len(out))
    ordered = sorted(out)
    return tuple(ordered[i] for i in order)


HELD_OUT_SENTENCES: tuple[str, ...] = (
    "the lamp is on the desk",
    "she bought a new hat",
    "the river runs to the sea",
    "we ate dinner outside",
    "the window was left open",
    "his shoes are under the bed",
    "the garden needs rain",
    "a plane flew over the town",
)
TRAIN_SENTENCES = TRAIN_SENTENCES + _grammar_sentences()
DIGIT_CARRIERS: tuple[str, ...] = ("{w}", "the number is {w}", "press {w}", "{w} please")
KEYWORD_CARRIERS: tuple[str, ...] = ("{w}", "say {w}", "the word is {w}")
# Spoken arithmetic: "{a} plus {b}" and "{a} minus {b}" with a one-digit result (0..9).
ARITHMETIC_CARRIERS: tuple[str, ...] = ("what is {a} {op} {b}", "{a} {op} {b}", "how much is {a} {op} {b}")
ARITHMETIC_OPERATORS: tuple[str, ...] = ("plus", "minus")


def synthesize(spec: SpeechSpec, sampling_rate: int = 16000, backend: str = "auto") -> np.ndarray:
    """espeak-ng -> mono float32 ``(T,)`` at ``sampling_rate`` with leading/trailing silence trimmed."""
    samples, sr = synthesize_raw(spec, backend)
    wave = resample(samples.astype(np.float32) / 32768.0, sr, sampling_rate)
    loud = np.flatnonzero(np.abs(wave) > 1e-3)
    if len(loud) == 0:
        raise SynthesisError(f"espeak-ng produced silence for {spec}")
    return wave[loud[0] : loud[-1] + 1]
