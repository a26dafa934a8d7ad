"""Training objectives (a registry): ``lm`` (next-token loss, the default), ``cord`` (CORD cross-modal
self-distillation, arXiv 2601.16547), its paper's off-policy baselines ``forward_kl`` and ``sft``, and
``text_lm`` (next-token loss on the text view of the same items: a competent text path, CORD's prerequisite)
and ``text_audio_lm`` (``text_lm`` plus the audio view's ``lm`` of every item: the text path learnt without the
other groups forgotten).

    objective = build_objective(config.objective)   # objective.type=cord in the training config
"""

from audiomoe.training.objectives import distill, lm  # noqa: F401  (registers lm, cord, forward_kl, sft)
from audiomoe.training.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    build_objective,
    register_objective,
)

__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "build_objective", "register_objective"]
