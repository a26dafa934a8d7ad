"""Music for the built-in corpus, synthesised in numpy: instrument timbres, key and mode, tempo, textures.

An instrument is a :class:`Timbre` recipe (partial frequency ratios and amplitudes, per-partial decay, attack,
vibrato, breath noise). A clip is a chord progression in a key and mode, played at a tempo with one onset per
beat, as block chords, an arpeggio, or a melody over a held chord. Chords are the triads of the scale, so the
tonic chord's third is major (4 semitones) or minor (3 semitones): the mode label is physically in the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALES: dict[str, tuple[int, ...]] = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
TEMPO_BPM: dict[str, tuple[int, int]] = {"slow": (55, 75), "medium": (100, 120), "fast": (160, 190)}
PROGRESSIONS: tuple[tuple[int, ...], ...] = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4))
TEXTURES: tuple[str, ...] = ("chords", "arpeggio", "melody")
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@dataclass(frozen=True)
class Timbre:
    """Additive-synthesis recipe of one instrument.

    ``ratios``/``amps``: partial frequencies (x f0) and amplitudes; ``decay``: per-second exponential decay of
    partial 1, growing by ``decay_slope`` per partial (0 = sustained); ``attack``/``release`` in seconds.
    """

    ratios: tuple[float, ...]
    amps: tuple[float, ...]
    decay: float = 0.0
    decay_slope: float = 0.0
    attack: float = 0.01
    release: float = 0.05
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # relative frequency deviation
    breath: float = 0.0  # relative level of noise


TIMBRES: dict[str, Timbre] = {
    "piano": Timbre(
        tuple(range(1, 9)), tuple(1 / n**1.4 for n in range(1, 9)), decay=2.0, decay_slope=0.8, attack=0.004
    ),
    "organ": Timbre((1, 2, 3, 4, 6, 8), (1.0, 0.8, 0.6, 0.4, 0.3, 0.2), attack=0.02),
    "flute": Timbre(
        (1, 2, 3), (1.0, 0.25, 0.08), attack=0.06, vibrato_hz=5.0, vibrato_depth=0.004, breath=0.04
    ),
    "strings": Timbre(
        tuple(range(1, 13)),
        tuple(1 / n for n in range(1, 13)),
        attack=0.12,
        vibrato_hz=6.0,
        vibrato_depth=0.006,
    ),
    "clarinet": Timbre((1, 3, 5, 7, 9), (1.0, 0.45, 0.25, 0.12, 0.06), attack=0.03),
    "bell": Timbre(
        (1.0, 2.0, 2.76, 5.4, 8.93), (1.0, 0.6, 0.5, 0.3, 0.15), decay=1.2, decay_slope=0.6, attack=0.002
    ),
}


@dataclass(frozen=True)
class MusicSpec:
    """One music clip. ``root``: MIDI note of the tonic; ``progression``: scale degrees (0-based) of the chords."""

    instrument: str
    root: int
    mode: str
    bpm: float
    texture: str
    progression: tuple[int, ...]
    duration: float
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{NOTE_NAMES[self.root % 12]} {self.mode}"


def midi_to_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


TABLE_SIZE = 4096  # samples per wavetable period; nearest lookup keeps phase error below 0.1% of a cycle


def _partials(timbre: Timbre, f0: float, sr: int, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices, ratios and amplitudes of the partials selected by ``keep`` that lie below Nyquist."""
    ratios, amps = np.asarray(timbre.ratios, dtype=np.float64), np.asarray(timbre.amps, dtype=np.float64)
    idx = np.arange(len(ratios))
    mask = (f0 * ratios < sr / 2 * 0.95) & keep(idx)  # never write above Nyquist: aliasing adds fake partials
    return idx[mask], ratios[mask], amps[mask]


def _envelope(timbre: Timbre, t: np.ndarray, length: float) -> np.ndarray:
    """Linear attack from 0 and linear release to 0 at ``length``; float32 like ``t``."""
    env = np.minimum(1.0, t / timbre.attack) if timbre.attack else np.ones_like(t)
    release = min(timbre.release, length / 2)
    return (env * np.clip((length - t) / release, 0.0, 1.0)).astype(np.float32)


def render_note(timbre: Timbre, f0: float, length: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One note of ``length`` seconds -> float32 ``(round(length*sr),)`` with peak about 1.

    Harmonic timbres use wavetable synthesis: one period of the summed partials is tabulated and read by phase,
    one lookup per sample instead of one sine per partial. Per-partial decay is approximated with two tables,
    the fundamental and the upper partials, each with its own decay. Inharmonic timbres (bell) add sines.
    """
    n = max(1, int(round(length * sr)))
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    cycles = np.arange(n) * (f0 / sr)  # phase of the fundamental in cycles; float64 so it does not drift
    if timbre.vibrato_depth:
        depth = f0 * timbre.vibrato_depth / (2 * np.pi * timbre.vibrato_hz)
        cycles += depth * np.sin(2 * np.pi * timbre.vibrato_hz * t)
    harmonic = all(float(r).is_integer() for r in timbre.ratios)
    groups = [lambda k: k == 0, lambda k: k > 0] if timbre.decay_slope else [lambda k: k >= 0]
    index = (cycles * TABLE_SIZE).astype(np.int64) % TABLE_SIZE if harmonic else None
    out = np.zeros(n, dtype=np.float32)
    for keep in groups:
        idx, ratios, amps = _partials(timbre, f0, sr, keep)
        if not len(idx):
            continue
        phases = rng.uniform(0, 2 * np.pi, len(idx))[:, None]
        if index is not None:
            grid = np.arange(TABLE_SIZE) / TABLE_SIZE * 2 * np.pi
            table = (amps[:, None] * np.sin(ratios[:, None] * grid + phases)).sum(0).astype(np.float32)
            part = table[index]
        else:
            part = (
                (amps[:, None] * np.sin(2 * np.pi * ratios[:, None] * cycles + phases))
                .sum(0)
                .astype(np.float32)
            )
        if timbre.decay:
            part *= np.exp(-t * np.float32(timbre.decay + timbre.decay_slope * float(idx.mean())))
        out += part
    if timbre.breath:
        out += np.float32(timbre.breath * np.abs(out).max()) * rng.standard_normal(n, dtype=np.float32)
    out *= _envelope(timbre, t, length)
    return out / np.float32(np.abs(out).max() + 1e-9)


def _triad(spec: MusicSpec, degree: int) -> list[int]:
    """MIDI notes of the scale triad on ``degree`` (root, third, fifth of the scale)."""
    scale = SCALES[spec.mode]
    notes = []
    for step in (0, 2, 4):
        idx = degree + step
        notes.append(spec.root + scale[idx % 7] + 12 * (idx // 7))
    return notes


def render_music(spec: MusicSpec, sampling_rate: int = 16000) -> np.ndarray:
    """Float32 ``(round(duration*sr),)`` clip, peak 0.5. One onset per beat; chords change every two beats."""
    rng = np.random.default_rng(spec.seed)
    timbre = TIMBRES[spec.instrument]
    sr = sampling_rate
    total = int(round(spec.duration * sr))
    out = np.zeros(total + sr, dtype=np.float32)  # one second of tail room, cut at the end
    beat = 60.0 / spec.bpm
    n_beats = max(1, int(np.ceil(spec.duration / beat)))
    scale = SCALES[spec.mode]
    cache: dict[tuple[int, int], np.ndarray] = {}

    def note_wave(note: int, length: float) -> np.ndarray:
        # Chords repeat within a clip: render each (note, length) once.
        key = (note, int(round(length * sr)))
        if key not in cache:
            cache[key] = render_note(timbre, midi_to_hz(note), length, sr, rng)
        return cache[key]

    for b in range(n_beats):
        chord = _triad(spec, spec.progression[(b // 2) % len(spec.progression)])
        start = int(round(b * beat * sr))
        if spec.texture == "chords":
            notes, length, gain = chord, beat * 0.95, 1.0 / 3
        elif spec.texture == "arpeggio":
            notes, length, gain = [chord[b % 3]], beat * 0.95, 1.0
        else:  # melody: a scale note an octave up, over the chord held quietly
            if b % 2 == 0:
                for note in chord:
                    pad = note_wave(note, 2 * beat * 0.98) * 0.12
                    out[start : start + len(pad)] += pad[: len(out) - start]
            degree = int(rng.integers(7))
            notes, length, gain = [spec.root + 12 + scale[degree]], beat * 0.9, 0.7
        for note in notes:
            wave = note_wave(note, length) * gain
            out[start : start + len(wave)] += wave[: len(out) - start]
    out = out[:total]
    fade = min(len(out), int(0.02 * sr))
    out[len(out) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)
