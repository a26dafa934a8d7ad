"""Analysis of what an adapter learned: gradient conflict between audio categories / tasks, expert
specialisation and routing health, their plots, and side-by-side reports of saved models.

- :mod:`~audiomoe.analysis.gradients`: per-group gradients, cosine / conflict ratio / magnitude similarity,
  look-ahead influence, :class:`GradientConflictTracker` for training loops.
- :mod:`~audiomoe.analysis.routing`: activation rates per attribute value, NMI, load balance.
- :mod:`~audiomoe.analysis.plots`: PNG heat maps, load bars, routing over a clip's spectrogram.
- :mod:`~audiomoe.analysis.report`: :func:`analyze_checkpoints` (``audiomoe analyze``).
"""

from audiomoe.analysis.gradients import (
    GradientConflictTracker,
    GradientReport,
    gradient_conflict,
    select_parameters,
)
from audiomoe.analysis.routing import RoutingCollector, RoutingStats, normalized_mutual_information

__all__ = [
    "GradientConflictTracker",
    "GradientReport",
    "RoutingCollector",
    "RoutingStats",
    "gradient_conflict",
    "normalized_mutual_information",
    "select_parameters",
]
