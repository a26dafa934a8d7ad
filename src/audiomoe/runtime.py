"""What this machine runs best: the precision (``auto`` -> bf16 only where bf16 is native), the number of
threads, and a description of the machine to print next to every figure.

Machines differ from one day to the next, so nothing here is hard-coded per machine:

- **Precision.** An AVX2-only CPU emulates bf16 (a bf16 matmul ran 7.6x slower than fp32 on a 2-core AMD EPYC
  with capability ``AVX2``); CPUs with AVX512-BF16 or AMX run it faster (AMD EPYC Zen4, capability ``AVX512``:
  256x512x512 matmul 0.37 ms bf16 vs 0.81 ms fp32). :func:`bf16_native` reads the capability flags, then confirms
  with a short probe (the flags say "supported" also where oneDNN only emulates bf16).
- **Threads.** On a 2-core machine with one core taken by another process, OpenMP's spin-waiting makes two
  threads several times slower than one; see :func:`choose_threads` for the policy and the measurements.

A bottom-layer module: torch, the standard library and :mod:`audiomoe.config` only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from audiomoe import __version__
from audiomoe.allocator import HUGE_PAGES_ENV, kernel_huge_pages
from audiomoe.config import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_ENV = "AUDIOMOE_BF16_NATIVE"  # 0/1: skip the flags and the probe (tests, users who know better)
THREADS_ENV = "AUDIOMOE_THREADS"  # N: intra-op threads, instead of the policy's choice
# The probe's matmul: one adapter/LLM projection of the tiny and demo models (tokens x width x width).
PROBE_SHAPE = (256, 512, 512)
# Capabilities whose bf16 is always emulated (no AVX512-BF16 / AMX): no probe needed.
EMULATED_CAPABILITIES = ("DEFAULT", "AVX2", "ZVECTOR", "VSX")


# ---------------------------------------------------------------------------------------------- precision
def bf16_native(device: torch.device | str = "cpu") -> bool:
    """True where bf16 autocast is faster than fp32 on ``device``.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN must report bf16 support and the ATen capability must
    be above AVX2, and then :func:`probe_bf16_ratio` must find a bf16 projection of :data:`PROBE_SHAPE` at least
    as fast as fp32 (ratio <= 1). The probe runs once per process and its verdict is kept in
    ``~/.cache/audiomoe/bf16-probe.json`` (``$XDG_CACHE_HOME`` honoured) keyed by CPU, capability and torch
    version, so repeated CLI calls do not re-probe. ``AUDIOMOE_BF16_NATIVE=0/1`` overrides all of this."""
    override = os.environ.get(BF16_ENV, "").strip()
    if override:
        if override not in ("0", "1"):
            raise ValueError(f"{BF16_ENV}={override!r}: use 0 (bf16 is emulated here) or 1 (bf16 is native)")
        return override == "1"
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    return _cpu_bf16_native()


def cpu_bf16_flags() -> tuple[str, bool]:
    """(ATen CPU capability, oneDNN bf16 support) as torch reports them for this process."""
    capability = str(torch.backends.cpu.get_cpu_capability())
    try:
        mkldnn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        mkldnn = False
    return capability, mkldnn


def flags_allow_bf16(capability: str, mkldnn_bf16: bool) -> bool:
    """The flags test alone: oneDNN bf16 support on a capability above AVX2."""
    return mkldnn_bf16 and capability.upper() not in EMULATED_CAPABILITIES


def probe_bf16_ratio(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 7) -> float:
    """bf16 time / fp32 time of one ``F.linear`` (what autocast runs for every projection) of ``shape`` = (tokens,
    in, out): min over ``repeats`` interleaved runs, so a slow spell on a shared machine hits both dtypes.

    On one thread: with two threads and another process on one core, every fp32 matmul waited for a time slice
    (12 ms instead of 0.8), and the ratio measured the contention, not bf16. One thread, 2-core AMD EPYC Zen4:
    0.47 native, 2.3 with oneDNN held to AVX-512 without bf16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``), 5.3 held to
    AVX2. About 15 ms where bf16 is native."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    pairs = {torch.float32: (x, weight), torch.bfloat16: (x.bfloat16(), weight.bfloat16())}
    best = dict.fromkeys(pairs, math.inf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                for dtype, (a, b) in pairs.items():
                    started = time.perf_counter()
                    torch.nn.functional.linear(a, b)
                    if i:  # the first round warms up oneDNN's kernels
                        best[dtype] = min(best[dtype], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] / best[torch.float32]


@functools.cache
def _cpu_bf16_native() -> bool:
    capability, mkldnn = cpu_bf16_flags()
    if not flags_allow_bf16(capability, mkldnn):
        return False
    key = "|".join(
        [
            cpu_model(),
            cpu_id(),
            capability,
            f"torch {torch.__version__}",
            os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        ]
    )
    path = cache_dir() / "bf16-probe.json"
    verdicts = _read_json(path)
    if isinstance(verdicts.get(key), dict) and "native" in verdicts[key]:
        return bool(verdicts[key]["native"])
    ratio = probe_bf16_ratio()
    native = ratio <= 1.0
    verdicts[key] = {"native": native, "bf16_over_fp32": round(ratio, 3), "shape": list(PROBE_SHAPE)}
    _write_json(path, verdicts)
    return native


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`bf16_native` else ``fp32``; explicit values are returned as given
    (fp16 on CPU is refused by :func:`autocast`, where it would run)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if bf16_native(device) else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (``auto`` is resolved first; fp32 = no autocast)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a GPU; use bf16 (or fp32, or auto) on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_device() -> torch.device:
    """The first GPU where there is one, else the CPU (where ``audiomoe eval`` puts the model)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ threads
def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; a container's cpuset shows up here)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(sample_seconds: float = 0.1) -> float:
    """How many of this process's cores were idle over the next ``sample_seconds`` (from ``/proc/stat``);
    falls back to cores minus the 1-minute load average where ``/proc/stat`` is missing."""
    cores = usable_cores()
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = _cpu_times(allowed)
        time.sleep(sample_seconds)
        after = _cpu_times(allowed)
    except (OSError, AttributeError):
        return max(0.0, cores - os.getloadavg()[0]) if hasattr(os, "getloadavg") else float(cores)
    idle = 0.0
    for cpu, (busy0, total0) in before.items():
        busy1, total1 = after.get(cpu, (busy0, total0))
        if total1 > total0:
            idle += 1.0 - (busy1 - busy0) / (total1 - total0)
    return idle


def _cpu_times(allowed: set[str]) -> dict[str, tuple[int, int]]:
    """``cpuN -> (busy jiffies, total jiffies)`` for the allowed cores (idle and iowait count as not busy)."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name in allowed:
            values = [int(v) for v in fields[:8]]
            times[name] = (sum(values) - values[3] - values[4], sum(values))
    if not times:
        raise OSError("/proc/stat lists none of this process's cores")
    return times


def choose_threads(threads: int | str = "auto", sample_seconds: float = 0.1) -> int:
    """Intra-op threads for this process: an explicit int, else ``$AUDIOMOE_THREADS``, else one fewer than the
    cores idle at start-up (at least 1), shared among this host's ``torchrun`` ranks: a 2-core machine trains on
    1 thread, a 16-core one on 15.

    Why: an OpenMP team as wide as the machine stalls at every barrier once another process takes one of its
    cores (the thread that shares a core waits for its time slice while the others spin). Leaving one core free
    gives that process somewhere to run. Measured with ``audiomoe bench contention`` (MoE LALM training steps/s,
    batch 8 x 1 s, fp32; quiet vs one busy-loop process; medians of 3 interleaved phase pairs; torch 2.13.0) on a
    2-core AMD EPYC (Zen4: family 25 model 17, capability AVX512, avx512_bf16) shared with other users (1-min load
    average 1.4-2.2 around the runs), steps/s:

    =================================== ============ =========== ==============
    policy, preset                       quiet          loaded    loaded/quiet
    =================================== ============ =========== ==============
    2 threads, libgomp spin, tiny        12.7, 11.8    3.1, 3.0    0.24, 0.25
    2 threads, GOMP_SPINCOUNT=3000        11.5          3.7         0.33
    2 threads, GOMP_SPINCOUNT=30000       12.9          1.6         0.12
    2 threads, OMP_WAIT_POLICY=PASSIVE     6.5          7.3         1.13
    1 thread, tiny                       8.7, 8.7      8.4, 7.8    0.96, 0.90
    2 threads, libgomp spin, demo size     4.85         1.36        0.28
    2 threads, PASSIVE, demo size          3.23         2.78        0.86
    1 thread, demo size                    3.11         2.82        0.91
    =================================== ============ =========== ==============

    (demo size = the ``whisper-tiny-en`` preset.) Any spinning collapses under load; PASSIVE keeps the ratio but
    its wake-ups cost what the second thread gains, so on 2 cores one thread is as fast as two passive ones or
    faster (also when another process already held a core at start-up: 9.5 vs 7.9 steps/s). One thread
    loses 30-35% of the quiet speed of two spinning ones and keeps loaded/quiet at 0.9; where the machine is known
    to be yours alone, ``AUDIOMOE_THREADS=2`` takes that speed back. Larger machines were not measured: there the
    rule keeps one core of headroom, and ``audiomoe bench contention`` is the check."""
    if not isinstance(threads, str):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return int(threads)
    if threads != "auto":
        try:
            return choose_threads(int(threads))
        except ValueError:
            raise ValueError(f"threads {threads!r}: give a positive integer or 'auto'") from None
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            count = int(env)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(
                f"{THREADS_ENV}={env!r}: give a positive integer (or unset it to let audiomoe choose)"
            )
        return count
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    idle = min(usable_cores(), int(idle_cores(sample_seconds) + 0.5))
    return max(1, (idle - 1) // local_ranks)


def configure_threads(threads: int | str = "auto") -> int:
    """``torch.set_num_threads(choose_threads(threads))``; returns the count."""
    count = choose_threads(threads)
    torch.set_num_threads(count)
    return count


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """``model name`` from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_id() -> str:
    """Family/model/stepping: some CPUs report only a brand (``AMD EPYC``) as their model name."""
    info = _cpuinfo()
    parts = [f"{key} {info[key]}" for key in ("cpu family", "model", "stepping") if key in info]
    return ", ".join(parts)


def cpu_bf16_features() -> list[str]:
    """The bf16 instruction sets ``/proc/cpuinfo`` lists (``avx512_bf16``, ``amx_bf16``, ...)."""
    return sorted(flag for flag in _cpuinfo().get("flags", "").split() if "bf16" in flag)


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` ({} where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The machine and software a figure came from, and what audiomoe chooses on it (``audiomoe env``).
    Reads package versions from their metadata (nothing is imported but torch) and works offline."""
    capability, mkldnn = cpu_bf16_flags()
    cuda = torch.cuda.is_available()
    device = f"cuda:0 {torch.cuda.get_device_name(0)}" if cuda else "cpu"
    return {
        "audiomoe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_capability": capability,
        "cpu_bf16_features": cpu_bf16_features(),
        "mkldnn_bf16": mkldnn,
        "cores": {"os": os.cpu_count(), "usable": usable_cores()},
        "device": device,
        "cuda": cuda,
        "bf16_native": bf16_native(default_device()),
        "default_precision": resolve_precision("auto", default_device()),
        "threads": choose_threads("auto"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "huge_pages": {"kernel": kernel_huge_pages(), HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV)},
        "memory_gib": memory_gib(),
    }


# ---------------------------------------------------------------------------------------------- disk cache
def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audiomoe"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write; a read-only or missing home only costs a re-probe next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- CLI
def add_runtime_arguments(parser: argparse.ArgumentParser, precision: bool = True) -> None:
    """``--threads`` (and ``--precision``) as ``eval``, ``infer`` and ``train`` share them."""
    if precision:
        parser.add_argument(
            "--precision",
            default="auto",
            choices=["auto", "fp32", "bf16"],
            help="autocast precision (auto: bf16 where this machine runs it natively, else fp32)",
        )
    parser.add_argument(
        "--threads",
        default="auto",
        help=f"torch intra-op threads (auto: ${THREADS_ENV}, else the idle cores minus one, at least 1)",
    )
