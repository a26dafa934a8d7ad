"""Stage timing shared by the recipes: each stage's wall time, printed as it ends and kept for the report."""

from __future__ import annotations

import time


class StageClock:
    """``clock.lap("encode")`` after each stage: prints ``[demo] encode: 12.3 s`` and records it in
    ``clock.timings`` (seconds since the previous lap, or since the clock started)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.started = self._last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 1)
        self._last = now
        print(f"[{self.prefix}] {name}: {self.timings[name]:.1f} s", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
