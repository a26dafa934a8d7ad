"""Forest plot of a :func:`audiomoe.evaluation.stats.compare` result, written as a PNG.

Left panel: one row per task group and one for overall; per arm a marker at its mean over seeds with a
horizontal bar over its interval (arms offset vertically, one colour each), and a dotted tick at the row's chance
level where the result knows it. Right panel: the paired differences (reference - other) with their intervals and
a line at 0, so a bar that crosses the line reads "no difference detectable".

The figure is a bare :class:`matplotlib.figure.Figure` on the Agg canvas: no pyplot state, no display. (Same look
as ``audiomoe.analysis.plots``, which evaluation may not import.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120
_COLOURS = colormaps["tab10"].colors


def _rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(scope, name)`` per row, top to bottom: groups in order, then overall."""
    return [("groups", g) for g in result["groups"]] + [("overall", "overall")]


def _offsets(n: int, spread: float = 0.6) -> np.ndarray:
    """``(n,)`` vertical offsets of n series within a row of height 1, centred on the row."""
    return np.zeros(1) if n == 1 else np.linspace(-spread / 2, spread / 2, n)


def _bars(
    ax: Any,  # matplotlib Axes
    rows: list[tuple[str, str]],
    series: Mapping[str, tuple[Mapping[str, Any], Any]],
    keys: tuple[str, str, str],
) -> None:
    """One marker + interval bar per series and row. series: ``{label: (a result entry with its scopes,
    colour)}``; keys: the (value, low, high) field names of that entry."""
    value, low, high = keys
    for k, (label, (data, colour)) in enumerate(series.items()):
        y = np.arange(len(rows)) + _offsets(len(series))[k]
        entries = [data[scope][name] for scope, name in rows]
        x = np.array([e[value] for e in entries])
        err = np.array([[e[value] - e[low] for e in entries], [e[high] - e[value] for e in entries]])
        ax.errorbar(
            x, y, xerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=2, lw=1.2, color=colour, label=label
        )


def forest_plot(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Write the two-panel forest plot of ``result`` (from :func:`~audiomoe.evaluation.stats.compare`) to
    ``path`` (PNG) and return the path."""
    rows = _rows(result)
    ref = result["reference"]
    pct = f"{100 * result['method']['confidence']:g}"
    diffs = result["differences"]
    height = 1.2 + 0.55 * len(rows) * max(1.0, len(result["arms"]) / 3)
    fig = Figure(figsize=(11 if diffs else 6, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if diffs else 1, squeeze=False, sharey=True)[0]

    ax = axes[0]
    colours = {arm: _COLOURS[k % len(_COLOURS)] for k, arm in enumerate(result["arms"])}
    _bars(ax, rows, {a: (v, colours[a]) for a, v in result["arms"].items()}, ("mean", "low", "high"))
    chance = result.get("chance") or {}
    label = "chance"
    for i, (scope, name) in enumerate(rows):
        level = chance.get("overall") if scope == "overall" else (chance.get("groups") or {}).get(name)
        if level is not None:
            ax.vlines(level, i - 0.45, i + 0.45, colors="0.35", linestyles=":", lw=1.2, label=label)
            label = None  # one legend entry
    ax.set_yticks(range(len(rows)), [name for _, name in rows])
    ax.axhline(len(rows) - 1.5, color="0.85", lw=0.8)  # overall apart from the groups
    ax.invert_yaxis()
    ax.set_xlabel(f"score (mean over seeds, {pct}% interval)")
    ax.set_title("arms")
    ax.grid(axis="x", color="0.92")
    ax.legend(fontsize=8, loc="best")

    if diffs:
        ax = axes[1]
        series = {f"{ref} \u2212 {o}": (d, colours[o]) for o, d in diffs.items()}  # the other arm's colour
        _bars(ax, rows, series, ("difference", "low", "high"))
        ax.axvline(0.0, color="0.2", lw=1)
        ax.set_xlabel(f"paired difference ({pct}% interval)")
        ax.set_title(f"{ref} \u2212 other")
        ax.grid(axis="x", color="0.92")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or f"{result['n_items']} items, reference {ref}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path
