"""Typed training configuration: one dataclass tree, loaded from YAML with dotted ``key=value`` overrides.

    cfg = load_train_config("demo", ["optim.lr=3e-4", "steps=200"])   # a shipped config name, or a YAML path

The resolved config is written to ``RUN/config.yaml`` at the start of every run, so a run directory always says
exactly what produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from audiomoe.config import ConfigError, load_config, resolve_config
from audiomoe.data.sources import Source
from audiomoe.plugins import load_plugins, locate

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Strategy = Literal["auto", "ddp", "fsdp"]


@dataclass
class ModelSection:
    """Which LALM to build, from one of: ``path`` (a saved model directory), ``config`` (an LALM YAML such as
    the shipped ``lalm-whisper-large-v3-qwen2.5-7b``, or a path) or ``preset`` (an ``audiomoe.models.presets`` name).
    ``adapter`` (may hold ``type``) is merged into the adapter section, ``overrides`` into the rest of the
    :class:`~audiomoe.models.lalm.LALMConfig` (e.g. ``{freeze: {llm: true}, lora: {llm: true}}``)."""

    preset: str = "tiny"
    config: str = ""
    path: str = ""
    adapter: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Manifests and batching. Batches are bucketed by duration; ``batch_size`` is per process and per micro-step.
    A ``train`` / ``dev`` entry is a path (JSONL(.gz), datasets directory, parquet, arrow, lhotse cuts, NeMo) or
    ``{path, weight, columns, task}`` (:class:`~audiomoe.data.sources.Source`); ``tasks`` are tasks files."""

    train: list[str | Source] = field(default_factory=list)
    dev: list[str | Source] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    # DataLoader worker processes decoding audio and computing features (0 = in the training process)
    num_workers: int = 0
    # > 0: batches hold up to this many seconds of audio (padded), batch_size is then only an upper bound
    max_batch_seconds: float = 0.0
    # with max_batch_seconds: a clip of d seconds costs d + d**2 / quadratic_duration (attention; 0 = linear)
    quadratic_duration: float = 0.0
    batch_size: int = 8
    eval_batch_size: int = 16
    # Periodic dev eval (generation) uses at most this many items; the full evaluation is `audiomoe eval`.
    max_dev_items: int = 256
    on_bad_line: Literal["fail", "skip"] = "fail"  # also for clips that do not decode (found before step 1)
    preflight: bool = True  # decode every train/dev clip before step 1 (cached by content hash)
    max_text_chars: int = 10_000  # longest instruction / answer accepted
    # Directory of the frozen-encoder feature cache; "" = run the encoder on every batch.
    feature_cache: str = ""
    feature_cache_dtype: Literal["float16", "float32"] = "float16"
    # tar shards (streamed): records are shuffled in consecutive windows of this many (audiomoe.training.streaming)
    shuffle_buffer: int = 1000


@dataclass
class OptimSection:
    """AdamW. ``weight_decay`` applies to matrices only (biases, norms and 1-d parameters are exempt)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # 0 disables clipping
    # auto: torch's fused AdamW (one pass over each parameter) where it runs (plain CPU / CUDA tensors; 5x faster
    # on CPU than the for-loop default, equal to it within float32 rounding), else torch's default choice
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class ScheduleSection:
    """Linear warmup to ``optim.lr``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""

    warmup_steps: int = 20
    min_lr_ratio: float = 0.1


@dataclass
class ObjectiveSection:
    """The training objective (``audiomoe.training.objectives``): ``lm`` (next-token loss on the answers, the
    default), ``cord`` (on-policy weighted reverse KL to the same model given the transcript, + GRPO with an
    agreement reward; arXiv 2601.16547), or its baselines ``forward_kl`` / ``sft`` on text-teacher rollouts.
    Defaults are the paper's except ``max_new_tokens`` (200 there; CPU-sized here)."""

    type: str = "lm"
    temperature: float = 1.0  # student rollouts (cord) and teacher rollouts (forward_kl, sft)
    max_new_tokens: int = 32
    teacher: Literal["live", "frozen_init"] = (
        "live"  # text-conditioned teacher: current weights or a frozen copy
    )
    top_k: int = 20  # K highest-divergence tokens per rollout get weight alpha
    alpha: float = 2.0
    beta: float = 2.0  # position decay from beta (first token) to 1 (last)
    seq_weight: float = 1.0  # weight of the GRPO term; 0 = token term only
    group_size: int = 4  # GRPO rollouts per item
    group_temperature: float = 1.5
    reward: Literal["agreement", "correctness"] = "agreement"  # vs the model's own text answer (CORD) or gold
    audio_weight: float = (
        1.0  # text_audio_lm: weight of the audio view's next-token loss beside the text view's
    )

    def __post_init__(self) -> None:
        if self.audio_weight < 0:
            raise ConfigError(f"objective.audio_weight must be >= 0, got {self.audio_weight}")
        for name in ("temperature", "group_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"objective.{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_new_tokens", "top_k", "group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"objective.{name} must be >= 1, got {getattr(self, name)}")
        if self.alpha < 1 or self.beta < 1:
            raise ConfigError(
                f"objective.alpha and objective.beta must be >= 1, got {self.alpha}, {self.beta}"
            )
        if self.seq_weight < 0:
            raise ConfigError(f"objective.seq_weight must be >= 0, got {self.seq_weight}")


@dataclass
class LogSection:
    """Where metrics go besides ``RUN/metrics.jsonl`` (``audiomoe.training.loggers``): ``backends`` from
    ``jsonl``, ``tensorboard``, ``wandb``. Empty = ``jsonl`` + TensorBoard when installed and ``tensorboard``
    is true; a backend named here that is not installed stops the run with one line naming its pip extra."""

    backends: list[str] = field(default_factory=list)
    wandb_project: str = "audiomoe"


@dataclass
class TrainConfig:
    """Everything one training run needs. Steps count optimizer updates (each ``grad_accum`` micro-batches)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    steps: int = 100
    grad_accum: int = 1
    # > 0: accumulate by token budget instead: each optimizer step takes batches until their supervised tokens
    # reach this many (per process), and weighs each by its share of the step's tokens (grad_accum must stay 1)
    tokens_per_step: int = 0
    # auto = bf16 where this machine runs it natively (GPU, or CPU with AVX512-BF16/AMX), else fp32; the trainer
    # resolves it once and RUN/config.yaml records what ran. fp16 needs a GPU.
    precision: Precision = "auto"
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 0  # 0 = only at the end
    keep_last: int = 2
    # full: rank 0 writes the gathered weights (model.safetensors) and optimizer (trainer.pt); sharded: every rank
    # writes its own shards with torch.distributed.checkpoint (model.dcp/), nothing is gathered. Either format
    # resumes on another number of processes when processes x grad_accum stays the same (training/trainer.py).
    checkpoint_format: Literal["full", "sharded"] = "full"
    strategy: Strategy = "auto"  # auto = DDP when launched by torchrun with more than one process
    fsdp_wrap: list[str] = field(default_factory=list)  # module class names sharded on their own under FSDP
    # FSDP2's MixedPrecisionPolicy under bf16/fp16: parameters all-gathered and computed in that dtype, gradients
    # reduced in fp32, fp32 master weights kept by the optimizer (false: fp32 all-gathers with autocast only)
    fsdp_mixed_precision: bool = True
    # DDP: MoE experts that receive no token in a step get no gradient; false is faster when every parameter is used
    find_unused_parameters: bool = True
    compile: bool = False
    # recompute the trainable LLM's / encoder's layer activations in the backward (training/activation_checkpointing)
    activation_checkpointing: bool = False
    progress: bool = True
    # with log.backends empty: TensorBoard too when the tensorboard package is installed (the older switch)
    tensorboard: bool = True
    log: LogSection = field(default_factory=LogSection)
    # Gradient conflict between audio categories (speech / sound / music) on fixed probe batches, every N optimizer
    # steps, logged to metrics.jsonl as grad/* (0 = off; about 2-3% overhead at 100 on the tiny LALM)
    grad_conflict_every: int = 0
    # User modules imported when the config is loaded (dotted names or .py paths, relative to this file's folder
    # when not found from the working directory): their registered adapters / encoders / tasks / metrics.
    plugins: list[str] = field(default_factory=list)
    # A step whose loss or gradient norm is NaN/inf: "skip" drops the update (counted in metrics.jsonl) and stops
    # the run after nan_patience such steps in a row; "stop" stops at the first; "raise" raises (a traceback).
    # Stopping leaves the last good checkpoint as it was.
    nan_policy: Literal["skip", "stop", "raise"] = "skip"
    nan_patience: int = 5

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "log_every", "keep_last", "nan_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "grad_conflict_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tokens_per_step < 0:
            raise ConfigError(f"tokens_per_step must be >= 0, got {self.tokens_per_step}")
        if self.tokens_per_step and self.grad_accum != 1:
            raise ConfigError(
                f"tokens_per_step={self.tokens_per_step} and grad_accum={self.grad_accum} both set how many batches "
                "a step takes; keep one (grad_accum=1 with a token budget)"
            )
        if self.schedule.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps must be >= 0, got {self.schedule.warmup_steps}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir)


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML + dotted overrides -> :class:`TrainConfig` (unknown keys and bad values raise ``ConfigError``);
    the config's ``plugins`` are imported."""
    # `train.KEY=...` (the spelling in docs and issues) names the top-level key KEY
    overrides = [o[len("train.") :] if o.startswith("train.") else o for o in overrides or []]
    config = load_config(TrainConfig, path, overrides)
    where = f"plugins in {path}" if path else "the plugins= override"
    base_dir = resolve_config(path).parent if path else None
    load_plugins(config.plugins, where, base_dir)
    # RUN/config.yaml records where each plugin file was found, so a --resume from the run directory finds it too
    config.plugins = [locate(spec, base_dir) for spec in config.plugins]
    return config
