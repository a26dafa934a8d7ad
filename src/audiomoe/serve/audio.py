"""Base64 audio of a request -> mono float32 ``(T,)`` at the model's rate, or a 400 saying what is wrong.

Decoding is soundfile's (libsndfile: wav, flac, ogg, mp3), mixing and resampling those of
:mod:`audiomoe.data.audio`; the checks are the server's own, worded for a client rather than a manifest.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import soundfile as sf

from audiomoe.data.audio import resample, to_mono
from audiomoe.serve.protocol import APIError

# What libsndfile decodes, by the names OpenAI clients put in ``input_audio.format``.
FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3", "aiff": "AIFF"}


def decode_audio(data: str, fmt: str, where: str, sampling_rate: int, max_seconds: float) -> np.ndarray:
    """``data``: base64 (a ``data:audio/...;base64,`` prefix is allowed) of a file in ``fmt``; returns ``(T,)``."""
    name = fmt.lower().strip()
    if name not in FORMATS:
        raise APIError(
            400, f"{where}: audio format {fmt!r} is not supported; send one of {sorted(FORMATS)}", where
        )
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: input_audio.data is not valid base64", where) from None
    if not raw:
        raise APIError(400, f"{where}: input_audio.data is empty; send the bytes of an audio file", where)
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            seconds = f.frames / f.samplerate if f.samplerate else 0.0
            if seconds > max_seconds:
                raise APIError(
                    400, f"{where}: the clip lasts {seconds:.1f} s, over this server's {max_seconds:g} s; "
                    "cut it or start the server with a larger --max-audio-seconds", where,
                )  # fmt: skip
            wave = f.read(dtype="float32", always_2d=True)
            rate = int(f.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        # libsndfile's own words ("Format not recognised."), without the BytesIO repr around them
        reason = getattr(err, "error_string", "") or str(err).rsplit(": ", 1)[-1] or type(err).__name__
        raise APIError(
            400, f"{where}: cannot decode the audio as {name} ({reason}); send a {name} file's bytes in base64",
            where,
        ) from None  # fmt: skip
    if wave.size == 0:
        raise APIError(400, f"{where}: the audio holds no samples", where)
    if not np.isfinite(wave).all():
        raise APIError(400, f"{where}: the audio holds NaN/inf samples; export it again", where)
    clip = resample(to_mono(wave), rate, sampling_rate)
    if clip.size == 0:
        raise APIError(400, f"{where}: the audio is too short to resample to {sampling_rate} Hz", where)
    return clip
