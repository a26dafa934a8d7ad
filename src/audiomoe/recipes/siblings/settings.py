"""The sizes of a siblings run (``audiomoe siblings``): the measured comparison (``FULL``, ~17 min on 2 cores)
and the smoke test (``QUICK``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from audiomoe.recipes.demo.settings import FULL as DEMO_FULL
from audiomoe.recipes.demo.settings import QUICK as DEMO_QUICK
from audiomoe.recipes.demo.settings import DemoSettings


@dataclass(frozen=True)
class SiblingsSettings:
    """``demo`` gives the corpus, encoder preset, foundation LLM, batch size, LR and generation settings (the
    demo's own); the fields here size the two comparisons.

    Architecture arms train ``steps`` steps from scratch; ``moe-upcycled`` trains a dense FFN with the MoE's expert
    width for ``steps // 2`` steps, upcycles it and trains ``steps // 2`` more. The distillation arms start from
    each seed's ``moe`` model and train ``distill_steps`` steps of ``distill_batch`` semantic items."""

    demo: DemoSettings
    # the demo's corpus plus spoken arithmetic, a semantic task whose answer follows from the words (CORD's case)
    extra_tasks: tuple[str, ...] = ("arithmetic",)
    steps: int = 200
    # The foundation LLM's text pretraining (the demo's foundation, longer, plus text_only_per_task text-only
    # items of each semantic task): measured on this corpus, 150 steps on the clips' text views alone gave text
    # scores arithmetic 0.02, digit 0.02 (the foundation does not answer from text); 1500 steps with 2000 items
    # per task: arithmetic 0.67, digit 1.0, keyword 1.0, transcribe 0.59 (~3 min on one core)
    foundation_steps: int = 1500
    text_only_per_task: int = 2000
    mlp_hidden: int = 256
    experts: int = 4
    top_k: int = 2
    moue_blocks: int = 4
    moue_experts_per_block: int = 2
    moue_top_k: int = 1
    # The text-path stage (text_audio_lm): the text view of the batch's semantic items (about a fifth of a batch
    # of the mixed corpus) plus text_audio_weight x the audio view of all of it, so the other groups are kept
    text_steps: int = 200
    text_batch: int = 32
    text_audio_weight: float = 0.5
    distill_steps: int = 60
    distill_batch: int = 16
    distill_lr: float = 3e-4
    distill_max_new_tokens: int = 16
    group_size: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    precision: str = "fp32"  # the demo measured fp32 faster than bf16 for this model size on CPU

    def with_seeds(self, count: int) -> SiblingsSettings:
        if count < 1:
            raise ValueError(f"--seeds must be at least 1, got {count}")
        return dataclasses.replace(self, seeds=tuple(range(count)))


# batches of 32, as when the siblings' figures in the README were measured (the demo itself now trains on 16)
FULL = SiblingsSettings(demo=dataclasses.replace(DEMO_FULL, batch_size=32))
QUICK = SiblingsSettings(
    demo=DEMO_QUICK, steps=4, foundation_steps=4, text_only_per_task=2, mlp_hidden=128, text_steps=2, text_batch=4, distill_steps=2, distill_batch=4, distill_max_new_tokens=4,
    group_size=2,
)  # fmt: skip
PROFILES = {"full": FULL, "quick": QUICK}
