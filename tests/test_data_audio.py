"""Audio I/O: resampling keeps pitch; every kind of bad file gives one AudioError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe.data.audio import AudioError, load_audio


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampling_keeps_sine_frequency(tmp_path: Path, sr: int) -> None:
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], axis=1) * 0.5
    path = tmp_path / f"sine{sr}.wav"
    sf.write(path, stereo.astype(np.float32), sr)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    assert abs(_peak_hz(wave, 16000) - 1000.0) <= 2.0
    assert 0.45 < np.abs(wave[1000:-1000]).max() < 0.55


def test_bad_files_raise_one_clear_error(tmp_path: Path) -> None:
    sr = 16000
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), sr)
    sf.write(tmp_path / "silent.wav", np.zeros(sr, dtype=np.float32), sr)
    nan = np.full(sr, 0.1, dtype=np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, sr, subtype="FLOAT")
    sf.write(tmp_path / "full.wav", np.full(sr, 0.1, dtype=np.float32), sr)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.flac").write_bytes(b"fLaC" + b"\x00" * 64)
    cases = {
        "empty.wav": "no samples",
        "silent.wav": "silent",
        "nan.wav": "NaN/inf",
        "truncated.wav": "truncated",
        "garbage.flac": "cannot decode",
        "missing.wav": "not found",
    }
    for name, words in cases.items():
        with pytest.raises(AudioError, match=words) as info:
            load_audio(tmp_path / name)
        assert name in str(info.value)
    assert len(load_audio(tmp_path / "full.wav")) == sr
