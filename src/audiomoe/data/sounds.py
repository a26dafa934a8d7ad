"""Environmental sound events for the built-in corpus, synthesised in numpy.

``EVENTS[name](duration, rng, sr) -> (T,) float32`` with peak 0.5. Each recipe has one physical signature a
model can pick up: a slow pitch sweep (siren), a keyed tone (alarm), damped impacts (knocking), a low harmonic
hum (engine), dense random drops (rain), slowly gusting low noise (wind), flat or 1/f noise (white / pink).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EventFn = Callable[[float, np.random.Generator, int], np.ndarray]


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit peak. Shape ``(n,)``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    spec *= freqs ** (-exponent / 2)
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-9)


def _t(duration: float, sr: int) -> np.ndarray:
    return np.arange(int(round(duration * sr))) / sr


def siren(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = _t(duration, sr)
    lo, hi, rate = rng.uniform(500, 750), rng.uniform(1100, 1500), rng.uniform(0.4, 1.2)
    freq = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase)


def alarm(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = _t(duration, sr)
    f, beeps = rng.uniform(1800, 3200), rng.uniform(3, 7)
    gate = (np.sin(2 * np.pi * beeps * t) > 0).astype(np.float64)
    return gate * np.sign(np.sin(2 * np.pi * f * t)) * 0.6


def knocking(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(round(duration * sr))
    out = np.zeros(n)
    f, decay = rng.uniform(120, 400), rng.uniform(25, 60)
    hit = np.arange(int(0.12 * sr)) / sr
    impulse = np.sin(2 * np.pi * f * hit) * np.exp(-decay * hit) + 0.3 * rng.standard_normal(
        len(hit)
    ) * np.exp(-decay * 3 * hit)
    pos = rng.uniform(0.0, 0.2)
    while pos < duration:
        for _ in range(int(rng.integers(2, 5))):  # a group of 2-4 knocks, then a pause
            start = int(pos * sr)
            if start >= n:
                break
            seg = impulse[: n - start]
            out[start : start + len(seg)] += seg * rng.uniform(0.7, 1.0)
            pos += rng.uniform(0.13, 0.2)
        pos += rng.uniform(0.4, 0.8)
    return out


def engine(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = _t(duration, sr)
    f0 = rng.uniform(28, 60)
    hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 9))
    rumble = coloured_noise(len(t), 2.0, rng)
    return hum * (1 + 0.4 * np.sin(2 * np.pi * f0 / 2 * t)) + 0.5 * rumble


def rain(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(round(duration * sr))
    drops = (rng.random(n) < rng.uniform(0.002, 0.006)) * rng.uniform(0.2, 1.0, n)
    kernel = np.exp(-np.arange(int(0.004 * sr)) / (0.0008 * sr))
    clicks = np.convolve(drops * rng.choice([-1.0, 1.0], n), kernel, mode="same")
    bed = coloured_noise(n, 0.5, rng)
    return clicks + 0.3 * bed


def wind(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = _t(duration, sr)
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3))
    return coloured_noise(len(t), 1.8, rng) * gust


def white_noise(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    return coloured_noise(int(round(duration * sr)), 0.0, rng)


def pink_noise(duration: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    return coloured_noise(int(round(duration * sr)), 1.0, rng)


EVENTS: dict[str, EventFn] = {
    "siren": siren,
    "alarm": alarm,
    "knocking": knocking,
    "engine": engine,
    "rain": rain,
    "wind": wind,
    "white noise": white_noise,
    "pink noise": pink_noise,
}


def render_event(
    name: str, duration: float, rng: np.random.Generator, sampling_rate: int = 16000
) -> np.ndarray:
    """Float32 ``(round(duration*sr),)`` clip of event ``name`` with peak 0.5 and 10 ms fades."""
    out = np.asarray(EVENTS[name](duration, rng, sampling_rate), dtype=np.float64)
    fade = min(len(out) // 2, int(0.01 * sampling_rate))
    ramp = np.linspace(0.0, 1.0, fade)
    out[:fade] *= ramp
    out[len(out) - fade :] *= ramp[::-1]
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)
