"""Audio I/O: decode with soundfile, mix to mono, resample with soxr, and refuse bad audio with a clear message.

``load_audio(path, sampling_rate=16000) -> np.ndarray`` (float32, shape ``(T,)``, mono, at ``sampling_rate``)
is the one entry point training and evaluation use. Every failure raises :class:`AudioError` naming the file,
what is wrong with it and what to do: undecodable (unknown format, corrupt header), truncated (WAV data chunk
shorter than its header says), empty (no samples), NaN/inf samples, or silence (peak below ``silence_peak``).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SILENCE_PEAK = 1e-4  # below this peak (full scale 1.0) a clip carries nothing an encoder could use


class AudioError(ValueError):
    """A clip cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (cheap: no decoding)."""

    path: str
    sampling_rate: int
    frames: int
    channels: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sampling_rate if self.sampling_rate else 0.0


def _wav_truncation(path: Path) -> str | None:
    """For RIFF/WAVE files, compare the data chunk size in the header with the bytes on disk.

    libsndfile silently reads what is there, so a half-copied file would otherwise pass as a shorter clip.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return "WAV header has no data chunk"
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            offset += 8
            if cid == b"data":
                # Streaming writers (e.g. `espeak-ng --stdout`) put a 0 / 0xFFFFFFFF placeholder: not a truncation.
                if csize in (0, 0xFFFFFFFF, 0x7FFFFFFF):
                    return None
                have = size - offset
                if have < csize:
                    return f"truncated: header promises {csize} data bytes, file holds {have}"
                return None
            offset += csize + (csize & 1)
            f.seek(offset)


def audio_info(path: str | Path) -> AudioInfo:
    """Header information; raises AudioError for a missing or undecodable file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(
            f"{path}: audio file not found; check the path (relative paths are resolved against "
            "the manifest's folder)"
        )
    if path.stat().st_size == 0:
        raise AudioError(
            f"{path}: is empty (0 bytes); copy or export it again, or remove it from the manifest"
        )
    if not os.access(path, os.R_OK):  # libsndfile would call it an unknown format
        raise AudioError(f"{path}: is not readable (permission denied); fix its permissions")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            f"{path}: cannot decode ({err}); convert it to WAV or FLAC, e.g. `sox IN OUT.wav`"
        ) from None
    return AudioInfo(str(path), int(info.samplerate), int(info.frames), int(info.channels), str(info.format))


def to_mono(wave: np.ndarray) -> np.ndarray:
    """``(T, C) -> (T,)`` by averaging channels; ``(T,)`` passes through."""
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr high-quality resampling of a mono float32 ``(T,)`` array."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def check_waveform(wave: np.ndarray, where: str, silence_peak: float = SILENCE_PEAK) -> None:
    """Raise AudioError for empty, non-finite or silent audio. ``wave``: ``(T,)`` or ``(T, C)``."""
    if wave.size == 0:
        raise AudioError(f"{where}: has no samples (empty file); re-export or remove it from the manifest")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(f"{where}: contains {bad} NaN/inf samples; re-export the file or remove it")
    peak = float(np.abs(wave).max())
    if peak < silence_peak:
        raise AudioError(
            f"{where}: is silent (peak {peak:.2e} < {silence_peak:.0e}); remove it from the manifest"
        )


def load_audio(
    path: str | Path,
    sampling_rate: int = 16000,
    silence_peak: float = SILENCE_PEAK,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode ``path`` (or its segment from ``start`` seconds, lasting ``duration``; None = to the end) to mono
    float32 ``(T,)`` at ``sampling_rate`` Hz.

    Formats are whatever the installed libsndfile reads (wav, flac, ogg, and mp3 for libsndfile >= 1.1).
    Raises AudioError (a ValueError) naming the file for any clip that cannot be used as is.
    """
    path = Path(path)
    info = audio_info(path)
    problem = _wav_truncation(path)
    if problem:
        raise AudioError(f"{path}: {problem}; copy or export the file again")
    first = round(start * info.sampling_rate)
    wanted = info.frames - first if duration is None else round(duration * info.sampling_rate)
    where = (
        str(path)
        if not (start or duration)
        else f"{path} [{start:.3f} s +{wanted / info.sampling_rate:.3f} s]"
    )
    # a segment may end up to one 20 ms frame past the end (rounding in the tools that wrote the cut)
    if first < 0 or first + wanted > info.frames + info.sampling_rate // 50:
        raise AudioError(
            f"{where}: segment outside the file ({info.duration:.3f} s long); fix start/duration in the manifest"
        )
    wanted = min(wanted, info.frames - first)
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True, start=first, frames=wanted)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            f"{path}: cannot decode ({err}); convert it to WAV or FLAC, e.g. `sox IN OUT.wav`"
        ) from None
    if info.frames and len(wave) < wanted:
        raise AudioError(f"{where}: truncated ({len(wave)} of {wanted} frames decoded); export it again")
    check_waveform(wave, where, silence_peak)
    return resample(to_mono(wave), int(sr), sampling_rate)


def save_audio(path: str | Path, wave: np.ndarray, sampling_rate: int = 16000) -> None:
    """Write a mono ``(T,)`` float array as 16-bit PCM WAV (values clipped to [-1, 1]).

    Encoded in memory first: soundfile's close() fsyncs a real file, which costs ~10 ms of disk wait per clip
    and would dominate corpus building.
    """
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sampling_rate, subtype="PCM_16", format="WAV")
    Path(path).write_bytes(buffer.getvalue())
