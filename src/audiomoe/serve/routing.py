"""One clip's routing for the playground: chosen experts per adapter frame, this clip's expert load, and the
analysis package's routing-over-time plot (the log-mel spectrogram with each frame's experts on top) as a PNG.

The clip runs through the encoder and the adapter only (no LLM), as :func:`audiomoe.analysis.report` measures
routing; statistics come from :class:`~audiomoe.analysis.routing.RoutingCollector` (null experts and padding are
dropped there), the figure from :func:`~audiomoe.analysis.plots.plot_routing_over_time`.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiomoe.analysis import plots
from audiomoe.analysis.routing import RoutingCollector
from audiomoe.models.lalm import AudioLanguageModel


@torch.no_grad()
def clip_routing(model: AudioLanguageModel, clip: np.ndarray, device: torch.device | str = "cpu") -> dict:
    """Routing of ``clip`` ``(T,)`` (mono, at the processor's rate), as plain arrays.

    Returns ``routed`` False for a dense adapter; else ``num_experts`` E, ``expert_indices`` / ``expert_weights``
    ``(T', K)`` of the clip's valid frames (``-1`` for unused and null-expert slots), ``top1`` ``(T',)`` and
    ``load`` ``(E,)``, the share of this clip's routed slots each expert took.
    """
    features, lengths = model.processor.extract_features([clip])
    hidden, mask = model.encode_audio(features.to(device), lengths.to(device))
    out = model.embed_audio(hidden, mask)
    result: dict[str, Any] = {
        "adapter": model.config.adapter["type"],
        "seconds": len(clip) / model.processor.config.sampling_rate,
        "frames": int(out.mask[0].sum()),
        "routed": out.expert_indices is not None,
    }
    if out.expert_indices is None:
        return result
    collector = RoutingCollector()
    collector.add(out)
    stats = collector.stats()
    assert stats is not None  # the adapter routed
    valid = out.mask[0].bool()
    weights = out.expert_weights[0][valid].float().cpu().numpy() if out.expert_weights is not None else None
    result.update(
        num_experts=stats.num_experts,
        expert_indices=stats.expert_indices,  # null experts already -1 (the collector's rule)
        expert_weights=weights,
        top1=stats.top1,
        load=stats.balance().load,
    )
    return result


def routing_png(routing: dict, clip: np.ndarray, sampling_rate: int) -> bytes:
    """The routing-over-time figure of :func:`clip_routing`'s result, as PNG bytes."""
    mel = plots.log_mel(clip, sampling_rate)
    with tempfile.TemporaryDirectory(prefix="audiomoe-routing-") as tmp:
        path = plots.plot_routing_over_time(
            mel,
            routing["seconds"],
            routing["expert_indices"],
            routing["num_experts"],
            Path(tmp) / "routing.png",
            routing["expert_weights"],
            title=f"{routing['adapter']} adapter: experts chosen per frame (marker size: gate weight; line: top-1)",
        )
        return path.read_bytes()


def routing_json(routing: dict, png: bytes | None) -> dict[str, Any]:
    """What ``POST /v1/audiomoe/routing`` returns: the arrays as lists, the figure as a ``data:`` URL."""
    body = {k: (_plain(v) if isinstance(v, np.ndarray) else v) for k, v in routing.items()}
    if png is not None:
        body["image"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return body


def _plain(array: np.ndarray) -> list:
    return np.round(array.astype(np.float64), 6).tolist() if array.dtype.kind == "f" else array.tolist()
