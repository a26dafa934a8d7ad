"""Plots render to PNG files from small arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audiomoe.analysis.plots import (
    log_mel,
    plot_cosine_heatmaps,
    plot_expert_activation,
    plot_load_bars,
    plot_routing_over_time,
)
from audiomoe.analysis.routing import ActivationTable

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path: Path) -> None:
    groups = ["speech", "sound", "music"]
    cos = np.array([[1.0, 0.012, 0.013], [0.012, 1.0, -0.02], [0.013, -0.02, 1.0]])
    paths = [
        plot_cosine_heatmaps({"dense": (groups, cos), "moe": (groups, np.abs(cos))}, tmp_path / "cos.png"),
        plot_expert_activation(
            {
                "moe": ActivationTable(
                    "category",
                    groups,
                    np.random.default_rng(0).uniform(0.3, 0.7, (3, 8)),
                    np.array([10, 20, 30]),
                    0.5,
                )
            },
            tmp_path / "act.png",
        ),
        plot_load_bars({"moe": np.full(8, 1 / 8), "collapsed": np.eye(8)[0]}, tmp_path / "load.png"),
    ]
    sr = 16000
    t = np.arange(sr) / sr
    mel = log_mel(np.sin(2 * np.pi * 440 * t) * (t < 0.5), sr, num_mels=40)
    assert mel.shape[0] == 40 and 95 <= mel.shape[1] <= 105  # 10 ms hop over 1 s
    assert mel[:, :40].mean() > mel[:, 60:].mean()  # the tone is in the first half
    idx = np.array([[0, 1], [2, -1], [3, 0]])
    paths.append(
        plot_routing_over_time(
            mel, 1.0, idx, 4, tmp_path / "clip.png", np.array([[0.6, 0.4], [1, 0], [0.5, 0.5]])
        )
    )
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_plot_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_cosine_heatmaps({}, tmp_path / "x.png")
