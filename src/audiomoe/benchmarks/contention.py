"""Training speed under contention: LALM training steps/s on a quiet machine vs with one core taken by another
process, for the default thread policy and (for the record) torch's default, one spin-waiting thread per core.

Why: on a 2-core machine, two OpenMP threads that spin-wait collapse when another process holds one core (11x
slower steps were seen). The default policy (:func:`audiomoe.runtime.choose_threads`) should keep
``loaded_over_quiet`` (loaded steps/s / quiet steps/s) at or above 0.6.

How: libgomp reads its settings (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) once, when torch loads it, so each
policy ("arm") runs in its own worker process started with its environment. The workers build the model and warm
up once, then wait for orders; this process interleaves the phases over arms and conditions (quiet, loaded,
quiet, loaded, ...), starting a busy-loop process before each loaded phase and killing it after, and reports
medians. "Quiet" is only as quiet as the machine is: the 1-minute load average is reported with the results.

    audiomoe bench contention --json contention.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

from audiomoe import runtime

BUSY_LOOP = [sys.executable, "-S", "-c", "while True: pass"]
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", runtime.THREADS_ENV)


@dataclass(frozen=True)
class Arm:
    """One thread policy: environment changes for its worker (``None`` removes a variable) and threads."""

    name: str
    env: dict[str, str | None] = field(default_factory=dict)
    threads: str = "auto"

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        environ = dict(os.environ if base is None else base)
        for key, value in self.env.items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        return environ


def default_arms() -> list[Arm]:
    """The default policy (:func:`audiomoe.runtime.choose_threads`) vs torch's default, a thread per usable core
    (2 on the 2-core machines this was built on) spin-waiting as libgomp does; the user's OpenMP settings are
    cleared in both, so the arms compare the policies and nothing else."""
    cleared: dict[str, str | None] = dict.fromkeys(OMP_KEYS)
    cores = runtime.usable_cores()
    return [Arm("default", cleared, "auto"), Arm(f"spin-{cores}", cleared, str(cores))]


# ------------------------------------------------------------------------------------------------ worker
def _worker(threads: str, precision: str, preset: str) -> None:
    """Build the LALM of ``preset`` and say ``{"built": true}``; on ``start`` (sent while no sibling worker is
    busy, so the idle-core count is not fooled by the benchmark itself), choose threads, warm up and report the
    settings; then answer every ``run STEPS SECONDS`` line with one JSON line of steps/s."""
    import numpy as np
    import torch

    from audiomoe.models.lalm import AudioLanguageModel
    from audiomoe.models.presets import build_preset

    precision = runtime.resolve_precision(precision, "cpu")
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset(preset, "moe"))
    rng = np.random.default_rng(0)
    # 8 clips of 1 s with short answers: the tiny demo's batch shape
    clips = [[(0.1 * rng.standard_normal(16000)).astype(np.float32)] for _ in range(8)]
    batch = model.processor(["Which instrument is playing?"] * 8, clips, answers=["piano"] * 8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with runtime.autocast(precision, "cpu"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(json.dumps({"built": True}), flush=True)
    if sys.stdin.readline().strip() != "start":
        return
    count = runtime.configure_threads(threads)
    for _ in range(2):
        step()
    capability, _ = runtime.cpu_bf16_flags()
    ready = {"threads": count, "precision": precision, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps({**ready, "cpu_capability": capability, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        order = line.split()
        if not order or order[0] != "run":
            break
        steps, seconds = int(order[1]), float(order[2])
        done, started = 0, time.perf_counter()
        while done < steps and (done == 0 or time.perf_counter() - started < seconds):
            step()
            done += 1
        print(json.dumps({"steps": done, "steps_per_s": done / (time.perf_counter() - started)}), flush=True)


# ------------------------------------------------------------------------------------------------ parent
class _Worker:
    """A worker process of one arm; its stderr goes to a temporary file, shown if it fails."""

    def __init__(self, arm: Arm, precision: str, preset: str) -> None:
        self.arm = arm
        self.log: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed in close())
        command = [
            sys.executable,
            "-m",
            __name__,
            "--worker",
            "--threads",
            arm.threads,
            "--precision",
            precision,
            "--preset",
            preset,
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=arm.environ(),
        )
        self.ready: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        """The worker's next JSON line (anything a library printed to stdout is skipped)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        raise RuntimeError(f"bench contention: worker {self.arm.name!r} exited early:\n{tail}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def run(self, steps: int, seconds: float) -> float:
        self.send(f"run {steps} {seconds}")
        return float(self.read()["steps_per_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("exit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def measure(
    arms: list[Arm], steps: int, repeats: int, phase_seconds: float, precision: str, preset: str = "tiny"
) -> dict[str, dict[str, Any]]:
    """Raw per-phase steps/s of every arm and condition, phases interleaved (quiet, loaded per arm, arm order
    alternating between repeats)."""
    workers = [_Worker(arm, precision, preset) for arm in arms]
    try:
        for worker in workers:  # the imports and model builds run in parallel
            worker.read()
        for worker in workers:  # thread choice and warm-up one at a time, the others idle
            worker.send("start")
            worker.ready = worker.read()
        raw = {w.arm.name: {**w.ready, "quiet": [], "loaded": []} for w in workers}
        for repeat in range(repeats):
            for worker in workers if repeat % 2 == 0 else workers[::-1]:
                raw[worker.arm.name]["quiet"].append(worker.run(steps, phase_seconds))
                busy = subprocess.Popen(BUSY_LOOP)
                try:
                    time.sleep(0.2)  # let it reach its core
                    raw[worker.arm.name]["loaded"].append(worker.run(steps, phase_seconds))
                finally:
                    busy.kill()
                    busy.wait()
    finally:
        for worker in workers:
            worker.close()
    return raw


def summarize(raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians and ``loaded_over_quiet`` per arm, and each arm's speed over the first arm's (the default)."""
    arms: dict[str, Any] = {}
    for name, arm in raw.items():
        quiet, loaded = statistics.median(arm["quiet"]), statistics.median(arm["loaded"])
        arms[name] = {
            **{k: v for k, v in arm.items() if k not in ("quiet", "loaded")},
            "quiet_steps_per_s": round(quiet, 3),
            "loaded_steps_per_s": round(loaded, 3),
            "loaded_over_quiet": round(loaded / quiet, 3) if quiet > 0 else float("nan"),
            "quiet_all": [round(v, 3) for v in arm["quiet"]],
            "loaded_all": [round(v, 3) for v in arm["loaded"]],
        }
    first = next(iter(arms.values()))
    for arm in arms.values():
        arm["quiet_over_default"] = round(arm["quiet_steps_per_s"] / first["quiet_steps_per_s"], 3)
        arm["loaded_over_default"] = round(arm["loaded_steps_per_s"] / first["loaded_steps_per_s"], 3)
    return {"arms": arms}


def run_benchmark(
    steps: int = 5,
    repeats: int = 3,
    phase_seconds: float = 2.5,
    precision: str = "auto",
    arms: list[Arm] | None = None,
    preset: str = "tiny",
) -> dict[str, Any]:
    """Measure and summarise; ``phase_seconds`` caps a phase (at least one step) so a slow arm cannot run
    away with the time budget. The defaults take about 25 s on an idle 2-core machine, longer on a busy one."""
    if steps < 1 or repeats < 1:
        raise ValueError(f"bench contention: --steps and --repeats must be >= 1, got {steps} and {repeats}")
    started, load_before = time.perf_counter(), _load_average()
    arms = arms or default_arms()
    result = summarize(measure(arms, steps, repeats, phase_seconds, precision, preset))
    first = next(iter(result["arms"].values()))
    result["machine"] = {
        "cpu_model": runtime.cpu_model(),
        "cpu_id": runtime.cpu_id(),
        "cpu_capability": first.get("cpu_capability"),
        "cpu_bf16_features": runtime.cpu_bf16_features(),
        "usable_cores": runtime.usable_cores(),
        "torch": first.get("torch"),
        # other users' load: "quiet" is only as quiet as the machine was
        "load_average_1min": [load_before, _load_average()],
    }
    result["settings"] = {
        "preset": preset,
        "steps": steps,
        "repeats": repeats,
        "phase_seconds": phase_seconds,
        "busy_cores": 1,
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def format_report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu_model']} ({m['cpu_id']}), capability {m['cpu_capability']}, "
        f"bf16 {','.join(m['cpu_bf16_features']) or 'none'}, {m['usable_cores']} usable cores, torch {m['torch']}",
        f"1-min load average before/after: {m.get('load_average_1min')}",
        f"{result['settings']['preset']} LALM (moe) training steps/s, batch 8 x 1 s, quiet vs one busy core; "
        "medians of interleaved phases",
        "",
        "| policy | threads | precision | OMP_WAIT_POLICY | quiet steps/s | loaded steps/s | loaded_over_quiet |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for name, arm in result["arms"].items():
        lines.append(
            f"| {name} | {arm['threads']} | {arm['precision']} | {arm['omp_wait_policy'] or 'unset'} | "
            f"{arm['quiet_steps_per_s']:.2f} | {arm['loaded_steps_per_s']:.2f} | {arm['loaded_over_quiet']:.2f} |"
        )
    default = next(iter(result["arms"]))
    for name, arm in list(result["arms"].items())[1:]:
        lines.append(
            f"\n{name} over {default}: quiet {arm['quiet_over_default']:.2f}, loaded {arm['loaded_over_default']:.2f}"
        )
    lines.append(f"({result['seconds']:.0f} s)")
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="worker of `audiomoe bench contention` (internal)")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)
    _worker(args.threads, args.precision, args.preset)


if __name__ == "__main__":
    _main()
