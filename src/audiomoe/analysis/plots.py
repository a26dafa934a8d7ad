"""Plots of gradient conflict and routing, written as PNG files.

Figures are built on :class:`matplotlib.figure.Figure` directly (rendered by the Agg canvas), so nothing here
touches pyplot's global state or needs a display. Every function takes plain arrays / the tables of
:mod:`audiomoe.analysis.routing` and returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from audiomoe.analysis.routing import ActivationTable

DPI = 120
_DIVERGING = colormaps["RdBu"].with_extremes(bad="0.85")  # hidden / undefined cells in light grey


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _annotate(ax, matrix: np.ndarray, fmt: str, dark: np.ndarray) -> None:  # noqa: ANN001 - matplotlib Axes
    """Write each cell's value (nothing on hidden +-inf cells), in white where ``dark`` marks a dark cell."""
    for (i, j), v in np.ndenumerate(matrix):
        text = "" if np.isinf(v) else "n/a" if np.isnan(v) else format(v, fmt)
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark[i, j] else "black")


def _is_dark(normalized: np.ndarray) -> np.ndarray:
    """Cells of a diverging map far from its pale centre (colour-normalised values in [0, 1])."""
    return np.abs(np.nan_to_num(normalized, nan=0.5) - 0.5) > 0.3


def plot_matrix_panels(
    panels: Mapping[str, tuple[Sequence[str], np.ndarray]],
    path: str | Path,
    title: str,
    colorbar_label: str,
    fmt: str = "+.3f",
    hide_diagonal: bool = False,
) -> Path:
    """Side-by-side ``(G, G)`` matrices (one panel per model) on one diverging scale centred at 0.

    panels: ``{model label: (group names, matrix)}``; NaN cells are shown blank with "n/a".
    hide_diagonal: leave the diagonal out (a cosine of 1 with itself would otherwise set the colour scale and
    wash out the small off-diagonal values that matter).
    """
    if not panels:
        raise ValueError("nothing to plot: no matrices given")
    if hide_diagonal:
        panels = {k: (g, np.where(np.eye(len(m), dtype=bool), np.inf, m)) for k, (g, m) in panels.items()}
    finite = [np.abs(m[np.isfinite(m)]) for _, m in panels.values()]
    vmax = max([float(f.max()) for f in finite if f.size] + [1e-6])
    fig = Figure(figsize=(3.6 * len(panels) + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (label, (groups, matrix)) in zip(axes, panels.items()):
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=_DIVERGING, vmin=-vmax, vmax=vmax)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_yticks(range(len(groups)), groups)
        ax.set_title(label)
        with np.errstate(invalid="ignore"):
            _annotate(ax, matrix, fmt, _is_dark(0.5 + matrix / (2 * vmax)))
    fig.colorbar(image, ax=list(axes), label=colorbar_label, shrink=0.85)
    fig.suptitle(title)
    return _save(fig, path)


def plot_cosine_heatmaps(panels: Mapping[str, tuple[Sequence[str], np.ndarray]], path: str | Path) -> Path:
    """Gradient cosine between groups, e.g. ``{"dense (linear)": (groups, cos), "MoE": (groups, cos)}``."""
    return plot_matrix_panels(
        panels, path, "Adapter gradient cosine similarity", "cosine (mean over batches)", hide_diagonal=True
    )


def plot_influence_heatmaps(panels: Mapping[str, tuple[Sequence[str], np.ndarray]], path: str | Path) -> Path:
    """Influence ``[a, b]``: relative drop of b's loss after one step on a (rows: step on, columns: loss of)."""
    return plot_matrix_panels(
        panels, path, "Look-ahead influence (row: step on, column: loss of)", "1 - L_after/L_before"
    )


def plot_expert_activation(tables: Mapping[str, ActivationTable], path: str | Path) -> Path:
    """Expert activation rate per attribute value (rows) and expert (columns), as in the paper's Figure 3.

    The colour scale is centred at the uniform level ``k/E`` (white), which is also marked on the colour bar:
    red cells are experts a value prefers, blue ones it avoids.
    """
    if not tables:
        raise ValueError("nothing to plot: no activation tables given")
    height = max(len(t.values) for t in tables.values())
    fig = Figure(
        figsize=(
            0.55 * max(t.rates.shape[1] for t in tables.values()) * len(tables) + 2.5,
            0.45 * height + 2.0,
        ),
        layout="constrained",
    )
    axes = fig.subplots(1, len(tables), squeeze=False)[0]
    for ax, (label, table) in zip(axes, tables.items()):
        uniform = min(max(table.uniform, 1e-6), 1 - 1e-6)
        norm = TwoSlopeNorm(vcenter=uniform, vmin=0.0, vmax=1.0)
        image = ax.imshow(table.rates, cmap="RdBu_r", norm=norm, aspect="auto")
        num_experts = table.rates.shape[1]
        ax.set_xticks(range(num_experts), [f"E{e}" for e in range(num_experts)])
        ax.set_yticks(range(len(table.values)), [f"{v} ({n})" for v, n in zip(table.values, table.frames)])
        ax.set_xlabel("expert")
        ax.set_title(f"{label}: {table.attribute} (k/E = {table.uniform:.2f}, black line)")
        _annotate(ax, 100 * table.rates, ".0f", _is_dark(np.asarray(norm(table.rates))))
        bar = fig.colorbar(image, ax=ax, label="activation rate", shrink=0.9)
        bar.ax.axhline(table.uniform, color="black", linewidth=2)
    fig.suptitle("Share of frames whose chosen experts include each expert (%)")
    return _save(fig, path)


def plot_load_bars(loads: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Per-expert load shares, one bar group per expert and one bar per model, with the uniform 1/E line."""
    if not loads:
        raise ValueError("nothing to plot: no loads given")
    num_experts = max(len(v) for v in loads.values())
    width = 0.8 / len(loads)
    fig = Figure(figsize=(max(4.0, 0.6 * num_experts + 2), 3.0), layout="constrained")
    ax = fig.subplots()
    for i, (label, load) in enumerate(loads.items()):
        ax.bar(np.arange(len(load)) + (i - (len(loads) - 1) / 2) * width, load, width, label=label)
        ax.axhline(1.0 / len(load), color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(num_experts), [f"E{e}" for e in range(num_experts)])
    ax.set_ylabel("share of routed slots")
    ax.set_title("Expert load (dashed: uniform 1/E)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def log_mel(audio: np.ndarray, sample_rate: int, num_mels: int = 80, hop_seconds: float = 0.01) -> np.ndarray:
    """``(num_mels, frames)`` log10 mel spectrogram of a mono clip (transformers' audio utilities)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    hop = max(1, round(hop_seconds * sample_rate))
    n_fft = 1 << int(np.ceil(np.log2(2.5 * hop)))
    filters = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=num_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    mel = spectrogram(
        np.asarray(audio, dtype=np.float32),
        window_function(n_fft, "hann"),
        frame_length=n_fft,
        hop_length=hop,
        power=2.0,
        mel_filters=filters,
        log_mel="log10",
    )
    return np.maximum(
        mel, mel.max() - 8.0
    )  # 80 dB of range, as Whisper's features: digital silence is not -100 dB


def plot_routing_over_time(
    mel: np.ndarray,
    clip_seconds: float,
    expert_indices: np.ndarray,
    num_experts: int,
    path: str | Path,
    expert_weights: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """A clip's log-mel spectrogram with its routing over time drawn on top.

    mel: ``(num_mels, frames)``; expert_indices / expert_weights: ``(T', K)`` of the clip's valid tokens
    (``-1`` for unused slots). Each token's chosen experts are drawn as markers on a right-hand expert axis
    (marker size = gate weight; the top-1 expert is joined by a line), over the spectrogram's time axis.
    """
    tokens = expert_indices.shape[0]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, clip_seconds, 0, mel.shape[0]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    experts_ax = ax.twinx()
    centres = (np.arange(tokens) + 0.5) * clip_seconds / max(tokens, 1)
    weights = (
        np.ones(expert_indices.shape) if expert_weights is None else np.asarray(expert_weights, dtype=float)
    )
    rows, slots = np.nonzero(expert_indices >= 0)
    chosen = expert_indices[rows, slots]
    colours = [f"C{e % 10}" for e in chosen]
    experts_ax.scatter(
        centres[rows],
        chosen,
        s=12 + 60 * weights[rows, slots] / max(weights.max(), 1e-9),
        c=colours,
        edgecolors="white",
        linewidths=0.4,
    )
    top = np.where(weights * (expert_indices >= 0) > 0, weights, -np.inf).argmax(axis=1)
    top1 = expert_indices[np.arange(tokens), top]
    valid = top1 >= 0
    experts_ax.plot(centres[valid], top1[valid], color="white", linewidth=0.8, alpha=0.8)
    experts_ax.set_ylim(-0.5, num_experts - 0.5)
    experts_ax.set_yticks(range(num_experts), [f"E{e}" for e in range(num_experts)])
    experts_ax.set_ylabel("chosen experts")
    ax.set_title(title or "Routing over time (marker size: gate weight; line: top-1)")
    return _save(fig, path)
