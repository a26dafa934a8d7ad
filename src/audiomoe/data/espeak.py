"""espeak-ng engine: ``synthesize_raw(spec)`` gives exactly the samples of ``espeak-ng --stdout`` for a spec.

Two backends: ``"library"`` drives libespeak-ng through ctypes (voice servers, below; about 4 ms of CPU per
short utterance) and ``"cli"`` runs the ``espeak-ng`` program (about 12 ms: exec plus data and voice loading per
call). ``"auto"`` takes the library when it loads. Both give the same bytes, which keeps corpus builds
reproducible whatever the backend, worker count or order of work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import os
import resource
import shutil
import struct
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

ESPEAK = "espeak-ng"


class SynthesisError(ValueError):
    """espeak-ng is missing or failed; the message says how to fix it."""


def require_espeak() -> str:
    """Path of espeak-ng, or a SynthesisError telling how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise SynthesisError(
            "espeak-ng is not installed (needed for the speech of the built-in corpus); install it with "
            "`sudo apt-get install -y espeak-ng` (Debian/Ubuntu) or `make install`, then run again"
        )
    return path


@dataclass(frozen=True)
class SpeechSpec:
    """Everything espeak-ng needs for one utterance (a pure function of these fields)."""

    text: str
    voice: str  # e.g. "en-gb-scotland+f2"
    rate_wpm: int
    pitch: int  # espeak-ng -p, 0..99
    amplitude: int  # espeak-ng -a, 0..200


def _read_exact(fd: int, size: int) -> bytes:
    """Read exactly ``size`` bytes from a pipe (b"" if it closes first)."""
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return b""
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_REPLY = struct.Struct("<?dI")  # ok, CPU seconds spent for the request, number of sample bytes


class _VoiceServer:
    """A forked process holding a fresh engine with one voice loaded; it forks once per utterance.

    libespeak-ng keeps state between utterances (flutter counters, random generator) and between voice loads
    (settings of earlier variants), so an engine that has spoken, or loaded another voice, no longer makes
    what ``espeak-ng --stdout`` makes. The server loads its voice once on a fresh engine and never speaks; each
    utterance is spoken by a forked child, i.e. always by an engine in the CLI's exact starting state (a test
    compares the samples), without the CLI's exec, data loading and voice loading per utterance.
    """

    def __init__(self, engine: _EspeakLibrary, voice: str) -> None:
        self.voice = voice
        self.reported_cpu = 0.0  # CPU of served requests; the OS reports it only once the server is reaped
        req_r, self._req_w = os.pipe()
        self._res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(self._req_w)
                os.close(self._res_r)
                if engine.lib.espeak_SetVoiceByName(voice.encode()) == 0:
                    engine.serve(req_r, res_w)
                    code = 0
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(res_w)

    def request(self, spec: SpeechSpec) -> bytes | None:
        payload = json.dumps([spec.text, spec.rate_wpm, spec.pitch, spec.amplitude]).encode()
        try:
            os.write(self._req_w, struct.pack("<I", len(payload)) + payload)
        except BrokenPipeError:
            return None  # the server exited: its voice could not be loaded
        head = _read_exact(self._res_r, _REPLY.size)
        if not head:
            return None
        ok, cpu, size = _REPLY.unpack(head)
        self.reported_cpu += cpu
        data = _read_exact(self._res_r, size)
        return data if ok else None

    def close(self) -> None:
        os.close(self._req_w)  # the server sees EOF and exits
        os.close(self._res_r)
        os.waitpid(self.pid, 0)


class _EspeakLibrary:
    """In-process libespeak-ng giving the same samples as ``espeak-ng --stdout``, several times cheaper.

    This process only initialises the engine; voices live in :class:`_VoiceServer` children (one at a time).
    """

    RATE, VOLUME, PITCH = 1, 2, 3  # espeak_PARAMETER
    SYNCHRONOUS, POS_CHARACTER, CHARS_UTF8, ENDPAUSE = 2, 1, 1, 0x1000

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
        self.sampling_rate = int(self.lib.espeak_Initialize(self.SYNCHRONOUS, 0, None, 0))
        if self.sampling_rate <= 0:
            raise OSError("espeak_Initialize failed")
        self._chunks: list[bytes] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = callback_type(self._collect)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        # libespeak-ng draws from the C library's rand() (the whisper variant's breath noise), whose state a
        # child inherits from whatever this process did before; the CLI starts from glibc's unseeded state, srand(1)
        self._libc = ctypes.CDLL(None)
        self._server: _VoiceServer | None = None
        self._reaped_reported = 0.0
        self._owner = os.getpid()

    def _collect(self, wav, count: int, events) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * count))
        return 0

    def _speak(self, text: str, rate: int, pitch: int, amplitude: int) -> bytes | None:
        """Speak with the loaded voice (runs in a throw-away child of a voice server)."""
        self._libc.srand(1)
        for param, value in ((self.RATE, rate), (self.PITCH, pitch), (self.VOLUME, amplitude)):
            self.lib.espeak_SetParameter(param, value, 0)
        encoded = text.encode() + b"\0"
        flags = self.CHARS_UTF8 | self.ENDPAUSE
        if self.lib.espeak_Synth(encoded, len(encoded), 0, self.POS_CHARACTER, 0, flags, None, None) != 0:
            return None
        self.lib.espeak_Synchronize()
        return b"".join(self._chunks)

    def serve(self, req_r: int, res_w: int) -> None:
        """Voice-server loop: one request -> one forked child that speaks -> one reply; ends at EOF."""
        while head := _read_exact(req_r, 4):
            text, rate, pitch, amplitude = json.loads(_read_exact(req_r, struct.unpack("<I", head)[0]))
            start = _process_cpu()
            data_r, data_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(data_r)
                    data = self._speak(text, rate, pitch, amplitude)
                    if data is not None:
                        os.write(data_w, struct.pack("<d", _process_cpu()))
                        with os.fdopen(data_w, "wb") as pipe:
                            pipe.write(data)
                        code = 0
                finally:
                    os._exit(code)
            os.close(data_w)
            with os.fdopen(data_r, "rb") as pipe:
                reply = pipe.read()
            _, status = os.waitpid(pid, 0)
            ok = status == 0 and len(reply) >= 8
            child_cpu = struct.unpack("<d", reply[:8])[0] if ok else 0.0
            data = reply[8:] if ok else b""
            cpu = child_cpu + _process_cpu() - start
            os.write(res_w, _REPLY.pack(ok, cpu, len(data)) + data)

    def synthesize(self, spec: SpeechSpec) -> tuple[np.ndarray, int]:
        """``(int16 samples (T,), sampling rate)`` of one utterance."""
        if self._server is not None and self._server.voice != spec.voice:
            self._close_server()
        if self._server is None:
            self._server = _VoiceServer(self, spec.voice)
        data = self._server.request(spec)
        if data is None:
            self._close_server()
            raise SynthesisError(
                f"libespeak-ng failed to speak {spec.text!r} with voice {spec.voice!r}; see `espeak-ng --voices`"
            )
        return np.frombuffer(data, dtype=np.int16), self.sampling_rate

    def _close_server(self) -> None:
        assert self._server is not None
        self._server.close()
        # Once reaped, the server's whole CPU time shows in RUSAGE_CHILDREN, including what it reported.
        self._reaped_reported += self._server.reported_cpu
        self._server = None

    def unreaped_cpu(self) -> float:
        """CPU seconds to add to this process's children usage: the live server's requests, minus what
        reaped servers had already reported (now counted by the OS)."""
        live = self._server.reported_cpu if self._server is not None else 0.0
        return live - self._reaped_reported


_LIBRARY: _EspeakLibrary | None = None


def _library() -> _EspeakLibrary | None:
    """The per-process engine, or None when libespeak-ng cannot be loaded (then the CLI is used)."""
    global _LIBRARY
    if _LIBRARY is not None and _LIBRARY._owner != os.getpid():
        _LIBRARY = None  # inherited through fork: the voice server belongs to the parent
    if _LIBRARY is None:
        try:
            _LIBRARY = _EspeakLibrary()
        except (OSError, AttributeError):
            return None
    return _LIBRARY


def cpu_seconds() -> float:
    """CPU time of this process plus everything it ran for speech (espeak-ng subprocesses, voice servers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    extra = _LIBRARY.unreaped_cpu() if _LIBRARY is not None and _LIBRARY._owner == os.getpid() else 0.0
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + extra


def _synthesize_cli(spec: SpeechSpec) -> tuple[np.ndarray, int]:
    cmd = [ESPEAK, "--stdout", "-v", spec.voice, "-s", str(spec.rate_wpm), "-p", str(spec.pitch)]
    cmd += ["-a", str(spec.amplitude), spec.text]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError:
        require_espeak()
        raise
    except subprocess.CalledProcessError as err:
        msg = err.stderr.decode(errors="replace").strip()
        raise SynthesisError(f"espeak-ng failed for voice {spec.voice!r}: {msg}") from None
    wave, sr = sf.read(io.BytesIO(out), dtype="int16")
    return wave, int(sr)


def synthesize_raw(spec: SpeechSpec, backend: str = "auto") -> tuple[np.ndarray, int]:
    """espeak-ng output as it comes: ``(int16 (T,), 22050)``. ``backend``: "auto" | "library" | "cli"."""
    if backend not in ("auto", "library", "cli"):
        raise ValueError(f"backend must be auto, library or cli, got {backend!r}")
    engine = _library() if backend != "cli" and hasattr(os, "fork") else None
    if engine is None:
        if backend == "library":
            raise SynthesisError("libespeak-ng could not be loaded; install espeak-ng or use backend='cli'")
        return _synthesize_cli(spec)
    return engine.synthesize(spec)
