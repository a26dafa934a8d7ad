"""The sizes of a demo run: the full toy demo (``FULL``) and the smoke test (``QUICK``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from audiomoe.config import apply_overrides, check_override_keys, from_dict, to_dict
from audiomoe.models.presets import DEMO_LLM_SIZE

ARMS = ("linear", "mlp", "moe", "dense-twin")
REFERENCE_ARM = "moe"


@dataclass(frozen=True)
class DemoSettings:
    """One demo run. Every arm trains ``steps`` optimizer steps of ``batch_size`` clips, once per seed in ``seeds``.

    The corpus is the same for every seed (``corpus_seed``); a seed changes the adapter's initialisation and the
    order of the batches, which is the variation a reader's own rerun would see.
    """

    preset: str
    clips: int
    steps: int
    batch_size: int
    lr: float
    foundation_steps: int
    mlp_hidden: int
    experts: int
    top_k: int
    trim_probe_clips: int
    seeds: tuple[int, ...] = (0, 1, 2)
    corpus_seed: int = 0
    # the held-out share of the corpus: test is sized so a 5-point difference in a task group is detectable
    splits: tuple[tuple[str, float], ...] = (("train", 0.6), ("dev", 0.05), ("test", 0.35))
    # the small Qwen2 LLM every arm starts from (pretrained on the corpus text with a BPE vocabulary)
    llm: dict[str, int] = field(default_factory=lambda: dict(DEMO_LLM_SIZE))
    downsample_factor: int = (
        4  # encoder frames stacked into one adapter token (Whisper: 4 = 80 ms, the paper's)
    )
    vocab_size: int = 512  # BPE learned on the corpus text: nearly every corpus word is one token
    # the encoder states the adapter reads, concatenated (models.base.EncoderConfig.output_layers); () = the last.
    # The first block holds the speaker, pitch and timbre the last drops (audiomoe probe-layers), but tapping it
    # as well made every arm worse on held-out voices (the README's "what was tried"), so the demo reads the last.
    encoder_layers: tuple[int, ...] = ()
    asr_views: bool = True  # every training clip with speech is also a transcription example
    max_new_tokens: int = 24
    eval_batch_size: int = 64
    foundation_block: int = 64
    precision: str = "auto"  # resolved by the machine (audiomoe.runtime): bf16 only where it is native
    checkpoint_every: int = (
        0  # steps between an arm's checkpoints (0: only the final one); --resume continues there
    )
    workers: int = 0  # processes that train arms side by side, one thread each (0: one per free core)
    analyse: bool = True
    arms: tuple[str, ...] = ARMS
    # 0: no foundation stage, the preset's own (pretrained) LLM is used as it is
    # (``foundation_steps`` > 0 pretrains the small LLM above on the corpus text)

    def model_overrides(self, llm_dir: str) -> dict[str, Any]:
        """The preset's fields this run replaces: the foundation LLM (``llm_dir``; "" keeps the preset's own) and
        the encoder states the adapter reads."""
        overrides: dict[str, Any] = {"encoder": {"output_layers": list(self.encoder_layers)}}
        if llm_dir:
            overrides["llm"] = {"path": llm_dir, "tokenizer": llm_dir, "config": None}
        return overrides

    def with_overrides(self, overrides: list[str]) -> DemoSettings:
        """These settings with dotted ``key=value`` overrides applied (``steps=800``, ``arms=[linear,moe]``)."""
        if not overrides:
            return self
        check_override_keys(DemoSettings, overrides)
        return from_dict(DemoSettings, apply_overrides(to_dict(self), overrides), where="demo settings")

    def with_seeds(self, count: int) -> DemoSettings:
        if count < 1:
            raise ValueError(f"--seeds must be at least 1, got {count}")
        return dataclasses.replace(self, seeds=tuple(range(count)))


# 1000 steps of 16 rather than 400 of 32: more updates for 1.25x the clips, about 1.5x the training time; one
# seed each, on this corpus: linear WER 0.62 -> 0.41 and MoE 0.61 -> 0.49 (800 x 16: 0.50 / 0.56), the README's
# "what was tried" table
FULL = DemoSettings(
    preset="whisper-tiny-en", clips=3000, steps=1000, batch_size=16, lr=3e-3, foundation_steps=150,
    mlp_hidden=256, experts=8, top_k=2, trim_probe_clips=24,
)  # fmt: skip
QUICK = DemoSettings(
    preset="tiny", clips=100, steps=4, batch_size=4, lr=2e-3, foundation_steps=4, mlp_hidden=128, experts=4,
    top_k=2, trim_probe_clips=4, max_new_tokens=8, foundation_block=32, vocab_size=320,
    llm={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    splits=(("train", 0.5), ("dev", 0.1), ("test", 0.4)),
)  # fmt: skip
# `make experiment`: real Whisper tiny.en + real SmolLM2-135M-Instruct (LoRA r 8), the MoE against the dense FFN
# with its active parameters (8 ffn experts x 256, top-2, one shared; dense FFN 768), on the demo's corpus.
EXPERIMENT = DemoSettings(
    preset="real-small", clips=3000, steps=400, batch_size=8, lr=1e-3, foundation_steps=0, mlp_hidden=768,
    experts=8, top_k=2, trim_probe_clips=48, arms=("mlp", "moe"), max_new_tokens=32, eval_batch_size=32,
    checkpoint_every=100,
)  # fmt: skip
PROFILES = {"full": FULL, "quick": QUICK, "experiment": EXPERIMENT}
