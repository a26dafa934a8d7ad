"""Serving throughput (``audiomoe bench serve``): ``audiomoe serve`` under 1, 4 and 16 concurrent clients against
the same requests answered one by one in-process, in the same run.

    audiomoe bench serve [--requests 32 --max-tokens 16 --clients 1 4 16]

A tiny model (``--preset tiny``, MoE adapter, random init) is saved to a temporary directory and served by a real
``audiomoe serve`` process on a free local port (its own process, as in use: clients and server do not share an
interpreter). Every arm answers the same ``--requests`` chat completions: one clip each (WAV bytes; lengths cycle
through 1, 1.5 and 2 s), greedy, ``--max-tokens`` new tokens at most.

- **one by one, in-process**: decode the WAV, the processor, ``model.generate`` on a batch of one, request after
  request (what ``audiomoe infer`` does per clip, no HTTP);
- **server, C clients**: C threads, each with its own keep-alive HTTP connection, send requests until all are
  answered; the server batches what arrives together (``--max-batch``, ``--max-wait-ms``).

Requests/s is answered requests over the arm's wall time; latency is per request (p50 and p95, nearest-rank).
The speed-up is requests/s at the largest client count over one by one in-process; both arms use the same
thread count, precision and device. The server's mean batch size per arm comes from its ``/health`` counters.
The bench talks to the server over HTTP only (``benchmarks`` sits below ``serve`` in the layer order).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from audiomoe import runtime
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset

SR = 16000
QUESTION = "What do you hear?"
MODEL_NAME = "bench"


def bench_clips(count: int, seed: int = 0) -> list[bytes]:
    """``count`` WAV files (16-bit, 16 kHz): a tone plus noise, 1 / 1.5 / 2 s in turn."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        seconds = (1.0, 1.5, 2.0)[i % 3]
        t = np.arange(int(seconds * SR)) / SR
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 3000) * t) + 0.05 * rng.standard_normal(t.size)
        buffer = io.BytesIO()
        sf.write(buffer, wave.astype(np.float32), SR, format="WAV", subtype="PCM_16")
        clips.append(buffer.getvalue())
    return clips


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarise(latencies: list[float], wall: float) -> dict[str, float]:
    return {
        "requests_per_s": round(len(latencies) / wall, 3),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "wall_s": round(wall, 3),
    }


def one_by_one(
    model: AudioLanguageModel, clips: list[bytes], max_tokens: int, precision: str, device
) -> dict:
    """The baseline: each request alone, in-process."""
    latencies, started = [], time.perf_counter()
    for clip in clips:
        begin = time.perf_counter()
        wave, _ = sf.read(io.BytesIO(clip), dtype="float32")
        batch = {k: v.to(device) for k, v in model.processor([QUESTION], [[wave]]).items()}
        with runtime.autocast(precision, device):
            model.generate(**batch, max_new_tokens=max_tokens)
        latencies.append(time.perf_counter() - begin)
    return summarise(latencies, time.perf_counter() - started)


def _body(clip: bytes, max_tokens: int) -> bytes:
    audio = {"data": base64.b64encode(clip).decode("ascii"), "format": "wav"}
    content = [{"type": "input_audio", "input_audio": audio}, {"type": "text", "text": QUESTION}]
    request = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    return json.dumps(request).encode()


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> dict:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"server answered {response.status} on {path}: {payload}")
    return payload


def with_clients(port: int, bodies: list[bytes], clients: int) -> dict:
    """All ``bodies`` sent by ``clients`` threads (one connection each); per-request latency and wall time."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock, next_index = threading.Lock(), [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while True:
                with lock:
                    if next_index[0] >= len(bodies) or errors:
                        return
                    body = bodies[next_index[0]]
                    next_index[0] += 1
                begin = time.perf_counter()
                _request(conn, "POST", "/v1/chat/completions", body)
                with lock:
                    latencies.append(time.perf_counter() - begin)
        except BaseException as err:  # reported after the arm; the other clients stop
            errors.append(err)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return summarise(latencies, wall)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return _request(conn, "GET", "/health")
    finally:
        conn.close()


def _wait_until_up(process: subprocess.Popen, port: int, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-2000:].strip()
            raise RuntimeError(f"audiomoe serve exited with {process.returncode}: {tail}")
        try:
            _health(port)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"audiomoe serve did not answer /health on port {port} within {timeout:.0f} s")


def run_benchmark(
    requests: int = 32,
    clients: tuple[int, ...] = (1, 4, 16),
    max_tokens: int = 16,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    preset: str = "tiny",
    adapter: str = "moe",
    threads: int | str = "auto",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Both arms on the same requests; see the module docstring."""
    if requests < 1 or not clients or min(clients) < 1 or max_tokens < 1:
        raise ValueError("bench serve: --requests, --max-tokens and every --clients value must be >= 1")
    threads = runtime.configure_threads(threads)
    device = runtime.default_device()
    precision = runtime.resolve_precision(precision, device)
    clips = bench_clips(requests)
    bodies = [_body(clip, max_tokens) for clip in clips]
    with tempfile.TemporaryDirectory(prefix="audiomoe-bench-serve-") as tmp:
        model_dir = Path(tmp) / MODEL_NAME
        model = AudioLanguageModel(build_preset(preset, adapter_type=adapter))
        model.save_pretrained(model_dir)
        model = AudioLanguageModel.from_pretrained(model_dir).to(device)  # what the server loads
        one_by_one(model, clips[:2], max_tokens, precision, device)  # warm-up
        baseline = one_by_one(model, clips, max_tokens, precision, device)
        del model

        port = _free_port()
        command = [
            sys.executable, "-m", "audiomoe.cli.main", "serve", "--checkpoint", str(model_dir),
            "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
            "--max-queue", str(max(64, 2 * max(clients))), "--threads", str(threads), "--precision", precision,
            "--log-level", "warning",
        ]  # fmt: skip
        log_path = Path(tmp) / "serve.log"  # a file, not a pipe: nobody reads it while the server runs
        with log_path.open("w") as log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_until_up(process, port, log_path)
            with_clients(port, bodies[:2], 1)  # warm-up
            served = {}
            for count in clients:
                before = _health(port)
                served[count] = with_clients(port, bodies, count)
                after = _health(port)
                batches = after["batches"] - before["batches"]
                served[count]["mean_batch"] = round(
                    (after["requests"] - before["requests"]) / max(batches, 1), 2
                )
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    top = max(clients)
    return {
        "preset": preset,
        "adapter": adapter,
        "requests": requests,
        "max_tokens": max_tokens,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "threads": threads,
        "precision": precision,
        "device": str(device),
        "cpu_model": runtime.cpu_model(),
        "torch": torch.__version__,
        "one_by_one_in_process": baseline,
        "server": {str(c): v for c, v in served.items()},
        "speedup_clients": top,
        "speedup": round(served[top]["requests_per_s"] / baseline["requests_per_s"], 2),
    }


def format_report(result: dict[str, Any]) -> str:
    rows = [
        f"serve: {result['requests']} chat completions (one 1-2 s clip, <= {result['max_tokens']} new tokens, "
        f"greedy) on the {result['preset']} preset with a {result['adapter']} adapter",
        f"machine: {result['cpu_model']}, {result['device']}, {result['threads']} thread(s), {result['precision']}, "
        f"torch {result['torch']}; server batches <= {result['max_batch']}, waits <= {result['max_wait_ms']:g} ms",
        f"{'arm':<28} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'mean batch':>11}",
    ]
    base = result["one_by_one_in_process"]
    rows.append(f"{'one by one, in-process':<28} {base['requests_per_s']:>8.2f} {base['p50_ms']:>9.1f} "
                f"{base['p95_ms']:>9.1f} {1:>11.2f}")  # fmt: skip
    for count, arm in result["server"].items():
        label = f"server, {count} client{'s' if count != '1' else ''}"
        rows.append(f"{label:<28} {arm['requests_per_s']:>8.2f} {arm['p50_ms']:>9.1f} {arm['p95_ms']:>9.1f} "
                    f"{arm['mean_batch']:>11.2f}")  # fmt: skip
    rows.append(
        f"batching speed-up: {result['speedup']:.2f}x requests/s at {result['speedup_clients']} clients "
        "vs one by one in-process (same run)"
    )
    return "\n".join(rows)
