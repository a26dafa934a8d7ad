"""The training loop: plain PyTorch, readable top to bottom (nanoGPT style, no hidden framework).

The loop is generic over

- a model whose ``forward(**batch)`` returns an object with ``.loss`` (the objective: LM loss plus the weighted
  auxiliary loss, as :class:`~audiomoe.models.lalm.LALMOutput` defines it) and ``.aux_loss`` (logged), and
  optionally ``.lm_loss`` (logged);
- a :class:`~audiomoe.training.stream.BatchStream` (resumable), and optionally a dev ``evaluate(model) -> dict``.

Per optimizer step: ``grad_accum`` micro-batches under autocast (DDP gradient sync only on the last one), gradient
clipping, AdamW, warmup + cosine LR. Every ``log_every`` steps one JSON line goes to ``RUN/metrics.jsonl`` (and to
the ``log.backends``, training/loggers); checkpoints are atomic and carry everything needed for an exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from tqdm.auto import tqdm

from audiomoe import runtime
from audiomoe.adapters import kernels
from audiomoe.adapters.moe import attach_router_bias_update
from audiomoe.analysis.gradients import GradientConflictTracker
from audiomoe.config import ConfigError, save_yaml
from audiomoe.tensors import to_device
from audiomoe.training import checkpoint as ckpt
from audiomoe.training.activation_checkpointing import apply_activation_checkpointing
from audiomoe.training.config import TrainConfig
from audiomoe.training.distributed import (
    DistEnv,
    barrier,
    default_device,
    init_distributed,
    mean_across_ranks,
    sum_across_ranks,
    unwrap,
    wrap_model,
)
from audiomoe.training.fingerprint import check_resume, config_fingerprint
from audiomoe.training.loggers import MetricLogger, open_loggers
from audiomoe.training.objectives import Objective, build_objective
from audiomoe.training.stream import BatchStream

Evaluate = Callable[[nn.Module], Mapping[str, float]]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call before building the model so every rank starts identical)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


FUSED_ADAMW_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def optimizer_implementation(params: list[torch.Tensor], requested: str) -> str:
    """The AdamW implementation ``optim.implementation`` resolves to for these parameters. ``auto`` takes the
    fused kernel when every parameter is a plain (not sharded DTensor) CPU or CUDA tensor of a float dtype, else
    ``default`` (torch's own choice: foreach on CUDA, the for-loop on CPU)."""
    if requested != "auto":
        return requested
    plain = all(
        type(p) in (torch.Tensor, nn.Parameter)
        and p.device.type in ("cpu", "cuda")
        and p.dtype in FUSED_ADAMW_DTYPES
        for p in params
    )
    return "fused" if plain else "default"


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay on matrices only (not on biases, norms, gates' 1-d params).
    The implementation chosen is on the optimizer as ``audiomoe_implementation``."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters: check the freeze settings")
    groups = [
        {"params": decay, "weight_decay": config.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    implementation = optimizer_implementation(decay + no_decay, config.optim.implementation)
    if implementation == "fused" and optimizer_implementation(decay + no_decay, "auto") != "fused":
        # torch only checks this at the first step, with a traceback
        raise ConfigError(
            "optim.implementation=fused needs every trainable parameter to be a plain CPU or CUDA float tensor "
            "(not a sharded DTensor); use optim.implementation=auto"
        )
    flags = {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for_loop": {"foreach": False},
        "default": {},
    }[implementation]
    optimizer = torch.optim.AdamW(
        groups, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps, **flags
    )
    optimizer.audiomoe_implementation = implementation  # type: ignore[attr-defined]
    return optimizer


def items_in(batch: Any) -> int:
    """Default throughput unit: rows of the first tensor in the batch."""
    values = batch.values() if isinstance(batch, Mapping) else batch
    for value in values:
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 0


def supervised_tokens(batch: Any) -> int:
    """Tokens a batch's loss averages over: its ``labels`` that are not -100, else its rows."""
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if isinstance(labels, torch.Tensor):
        return int((labels != -100).sum())
    return items_in(batch)


@dataclass
class TrainResult:
    step: int
    last_loss: float
    train_seconds: float
    run_dir: Path
    already_done: bool = False  # --resume of a finished run: nothing was trained or written
    non_finite_steps: int = 0  # updates skipped for a NaN/inf loss or gradient norm (nan_policy=skip)
    eval_error: str = ""  # a dev evaluation that failed (the checkpoint was saved before it)


class NonFiniteTraining(ValueError):
    """The loss or gradient norm stayed NaN/inf (``nan_policy``); the message names the step and the fix."""


class Trainer:
    """Runs ``config.steps`` optimizer steps of ``model`` on ``stream``; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        stream: BatchStream,
        evaluate: Evaluate | None = None,
        count_frames: Callable[[Any], int] = items_in,
        env: DistEnv | None = None,
        device: torch.device | None = None,
        tracker: GradientConflictTracker | None = None,
        fingerprint: dict[str, Any] | None = None,
        objective: Objective | None = None,
    ) -> None:
        self.env = env or DistEnv.from_env()
        self.device = device or default_device(self.env)
        init_distributed(self.env, self.device)
        # "auto" is decided once, from this machine; the run's config.yaml records the precision that ran.
        self.precision = runtime.resolve_precision(config.precision, self.device)
        # On CPU the verdict comes from a timing probe in each process: bf16 only if every rank found it native.
        probed = config.precision == "auto" and self.device.type == "cpu"
        if probed and sum_across_ranks(float(self.precision == "bf16"), self.env) < self.env.world_size:
            self.precision = "fp32"
        self.config = config = dataclasses.replace(config, precision=self.precision)
        self.stream = stream
        self.evaluate = evaluate
        self.count_frames = count_frames
        self.run_dir = config.run_dir
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"

        model.to(self.device)
        # which components recompute their activations; before wrapping / compiling, which must see it
        self.checkpointing: dict[str, str] = (
            apply_activation_checkpointing(model) if config.activation_checkpointing else {}
        )
        strategy = config.strategy if config.strategy != "auto" else "ddp"
        mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.model = wrap_model(
            model, self.env, self.device, strategy, config.fsdp_wrap, config.find_unused_parameters,
            param_dtype=mixed if config.fsdp_mixed_precision else None,
        )  # fmt: skip
        if config.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.model, config)
        # sigmoid-routed MoE layers: the aux-loss-free bias step runs before every optimizer step, so it sees the
        # load of all gradient-accumulation micro-batches (a no-op for other adapters)
        attach_router_bias_update(self.optimizer, self.model)
        self.tracker = tracker
        # the loss of a micro-batch: objective(model, batch) (training/objectives; lm = model(**batch).loss)
        self.objective = objective or build_objective(config.objective)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: warmup_cosine(
                s, config.steps, config.schedule.warmup_steps, config.schedule.min_lr_ratio
            ),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.train_seconds = 0.0
        self.non_finite_steps = 0
        self.eval_error = ""
        self._loggers: list[MetricLogger] = []  # log.backends besides metrics.jsonl (training/loggers)
        # what a --resume must find unchanged (run.py adds the data; a bare Trainer fingerprints the config)
        self.fingerprint = fingerprint or config_fingerprint(config, world_size=self.env.world_size)

    # ----------------------------------------------------------------------------------------- checkpoints
    @property
    def _per_rank_stream(self) -> bool:
        """Streamed shards, or a token budget (each rank takes as many batches as its tokens need)."""
        return bool(getattr(self.stream, "per_rank_state", False) or self.config.tokens_per_step)

    @property
    def _sharded(self) -> bool:
        return self.config.checkpoint_format == "sharded"

    def _state_options(self) -> StateDictOptions:
        # full: gathered to CPU tensors on every rank (rank 0 writes them); sharded: each rank's own (DTensor
        # shards under FSDP, replicated tensors under DDP, which DCP writes once)
        full = not self._sharded
        return StateDictOptions(full_state_dict=full, cpu_offload=full, ignore_frozen_params=True)

    def save_checkpoint(self) -> Path | None:
        """Atomically write the checkpoint of the current step (collective: every rank calls it)."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._state_options())
        tmp = ckpt.temp_dir_for(self.checkpoint_root, self.step)
        try:
            return self._write_checkpoint(tmp, model_state, optim_state)
        except (OSError, ckpt.CheckpointError) as err:
            # disk full / read-only / permissions / non-finite weights: no temp directory left to fill the disk,
            # older checkpoints intact
            if self.env.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, ckpt.CheckpointError):
                raise
            raise ckpt.storage_error(err, tmp, f"the step-{self.step} checkpoint") from None

    def _write_checkpoint(self, tmp: Path, model_state: dict, optim_state: dict) -> Path | None:
        if self.env.is_main:
            ckpt.begin_checkpoint(self.checkpoint_root, self.step)
        barrier(self.env)
        ckpt.save_object(ckpt.rng_state(), tmp / f"rng_rank{self.env.rank}.pt")
        if self._per_rank_stream:  # each rank is at its own position
            ckpt.save_object(self.stream.state_dict(), tmp / f"stream_rank{self.env.rank}.pt")
        if self._sharded:
            ckpt.save_sharded(
                {"model": model_state, "optim": optim_state},
                tmp / ckpt.SHARDED_DIR,
                lambda bad: sum_across_ranks(float(bad), self.env) > 0,
            )
        final = None
        if self.env.is_main:
            if not self._sharded:
                ckpt.save_tensors(model_state, tmp / ckpt.MODEL_FILE)
            trainer_state = {
                "step": self.step,
                "train_seconds": self.train_seconds,
                "world_size": self.env.world_size,
                "grad_accum": self.config.grad_accum,
                "optimizer": None if self._sharded else optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "stream": self.stream.state_dict(),
                "non_finite_steps": self.non_finite_steps,
            }
            # trainer.pt is written last: list_checkpoints only counts directories that hold it.
            ckpt.save_object(trainer_state, tmp / ckpt.TRAINER_FILE)
        barrier(self.env)
        if self.env.is_main:
            final = ckpt.commit_checkpoint(
                self.checkpoint_root, self.step, self.config.keep_last, self.fingerprint
            )
        barrier(self.env)
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state at ``path``, written in either format by any number of processes: with another
        number, each optimizer step must take as many micro-batches as before (processes x grad_accum, checked by
        the fingerprint), so the batch plan's position is rescaled and every step sees the same batches."""
        state = ckpt.load_object(path / ckpt.TRAINER_FILE)
        saved_world = int(state["world_size"])
        if ckpt.is_sharded(path):
            model_state, optim_state = get_state_dict(
                self.model, self.optimizer, options=StateDictOptions(ignore_frozen_params=True)
            )
            sharded = {"model": model_state, "optim": optim_state}
            ckpt.load_sharded(sharded, path / ckpt.SHARDED_DIR)
            model_state, optim_state = sharded["model"], sharded["optim"]
            options = StateDictOptions(strict=False)
        else:
            model_state, optim_state = ckpt.load_tensors(path / ckpt.MODEL_FILE), state["optimizer"]
            options = StateDictOptions(full_state_dict=True, strict=False)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=model_state,
            optim_state_dict=optim_state,
            options=options,
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(self._stream_state(path, state, saved_world))
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.non_finite_steps = int(state.get("non_finite_steps", 0))
        rng = path / f"rng_rank{self.env.rank}.pt"
        if rng.is_file():
            ckpt.set_rng_state(ckpt.load_object(rng))
        else:  # a rank the saving run did not have: its own stream, seeded from the run's seed, rank and step
            seed_everything(self.config.seed + self.env.rank + 1_000_003 * self.step)

    def _stream_state(self, path: Path, state: dict, saved_world: int) -> dict:
        """The batch stream's state for this rank. A plan's position counts this rank's micro-batches, each rank
        taking every world_size-th batch of one global list (audiomoe.data.sampler): under another number of
        processes the same global position is ``position x saved / now``."""
        per_rank = path / f"stream_rank{self.env.rank}.pt"
        if self._per_rank_stream:
            if saved_world != self.env.world_size:
                why = "with a token budget" if self.config.tokens_per_step else "reading streamed shards"
                raise ConfigError(
                    f"{path} was written by {saved_world} processes {why}, where each is at its own place in "
                    f"the data; it resumes only on {saved_world} processes (this run has {self.env.world_size})"
                )
            if per_rank.is_file():
                return ckpt.load_object(per_rank)
        stream_state = dict(state["stream"])
        if saved_world != self.env.world_size and "position" in stream_state:
            global_position = int(stream_state["position"]) * saved_world
            if global_position % self.env.world_size:
                raise ConfigError(
                    f"{path} is {global_position} batches into its epoch, which {self.env.world_size} processes "
                    f"cannot share evenly; resume on a number of processes that divides it"
                )
            stream_state["position"] = global_position // self.env.world_size
        return stream_state

    def apply_optim_config(self) -> None:
        """Put the current ``optim`` / ``schedule`` settings into the restored optimizer and scheduler (a
        checkpoint restores the old LR, betas, eps and weight decay; ``--allow-config-change`` means the new ones)."""
        optim = self.config.optim
        groups = self.optimizer.param_groups
        for group, decay in zip(groups, (optim.weight_decay, 0.0)):
            group.update(initial_lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=decay)
        self.scheduler.base_lrs = [optim.lr] * len(groups)
        for group, base, factor in zip(groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in groups]

    def _resume(self, allow_changes: list[str]) -> dict[str, tuple[Any, Any]]:
        """Load the newest checkpoint that verifies (saying which newer ones were skipped and why) after checking
        the config against the one it was written with. Returns the accepted changes."""
        path, manifest, skipped = ckpt.resumable_checkpoint(self.checkpoint_root)
        for line in skipped:
            if self.env.is_main:
                print(f"--resume: {line}", file=sys.stderr)
        barrier(self.env)
        if path is None:
            if skipped:
                raise ckpt.CheckpointError(
                    f"--resume: no checkpoint in {self.checkpoint_root} verifies ({len(skipped)} damaged); "
                    "start a new run in another out_dir"
                )
            if self.env.is_main:
                print(f"--resume: no checkpoint in {self.checkpoint_root}; starting from step 0")
            return {}
        changes = check_resume(manifest.get("fingerprint", {}), self.fingerprint, allow_changes, str(path))
        if self.env.is_main:
            for _, bad in ckpt.list_checkpoints(self.checkpoint_root):
                if bad.name > path.name:  # kept for inspection, out of the way of later saves and pruning
                    bad.rename(bad.with_name(f".damaged-{bad.name}"))
        barrier(self.env)
        self.load_checkpoint(path)  # restores the RNG states too
        if changes:
            self.apply_optim_config()
        if self.env.is_main:
            fallback = f" (the newest that verifies; {len(skipped)} newer skipped)" if skipped else ""
            print(f"resumed from {path} (step {self.step}){fallback}")
        return changes

    # --------------------------------------------------------------------------------------------- logging
    def _open_logs(self, resumed_step: int) -> None:
        if not self.env.is_main:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.config, self.run_dir / "config.yaml")
            if self.metrics_path.exists():
                self._trim_metrics(resumed_step)
        except OSError as err:
            raise ckpt.storage_error(err, self.run_dir, "the run's logs") from None
        self._loggers = open_loggers(self.run_dir, self.config, resumed_step)

    def _trim_metrics(self, resumed_step: int) -> None:
        """A killed run may have logged steps after its last checkpoint: drop them so the file stays one curve.
        A torn last line (a crash or a full disk mid-write) is dropped with a warning; a bad line elsewhere is
        an error naming it."""
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        keep = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):
                    print(
                        f"warning: {self.metrics_path}:{number}: torn last line dropped ({err.msg})",
                        file=sys.stderr,
                    )
                    continue
                raise ValueError(
                    f"{self.metrics_path}:{number}: not valid JSON ({err.msg}); fix or delete that line"
                ) from None
            if isinstance(record, dict) and record.get("step", 0) <= resumed_step:
                keep.append(line)
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        record = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
        }
        try:
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as err:
            raise ckpt.storage_error(err, self.metrics_path, "metrics") from None
        for logger in self._loggers:
            logger.log(record)

    def run_eval(self) -> dict[str, float]:
        """Dev evaluation on rank 0 with the unwrapped model (other ranks wait)."""
        results: dict[str, float] = {}
        if self.evaluate is not None and self.env.is_main:
            model = unwrap(self.model)
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), runtime.autocast(self.precision, self.device):
                    results = dict(self.evaluate(model))
            except (
                ValueError,
                OSError,
            ) as err:  # bad dev data must not cost the run: reported, training goes on
                self.eval_error = self.eval_error or f"dev evaluation at step {self.step} failed: {err}"
                print(f"warning: {self.eval_error}", file=sys.stderr)
                results = {}
            model.train(was_training)
            self.log(
                {"step": self.step, "split": "dev", **results}
                if results
                else {"step": self.step, "split": "dev", "error": self.eval_error}
            )
        barrier(self.env)
        return results

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, allow_changes: list[str] | None = None) -> TrainResult:
        """Train to ``config.steps``. ``resume`` continues from the newest checkpoint that verifies, refusing a
        changed config unless each changed key (or its section) is in ``allow_changes``."""
        cfg = self.config
        if self.env.is_main:
            ckpt.clean_stale(self.checkpoint_root)  # temp / empty step directories of an interrupted save
        barrier(self.env)
        latest = ckpt.latest_checkpoint(self.checkpoint_root)
        if latest is not None and not resume:
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints (latest {latest.name}); "
                "pass --resume to continue it or choose another out_dir"
            )
        changes = self._resume(list(allow_changes or [])) if resume else {}
        if not self.step:
            # Different dropout streams per rank; the model itself was built before this (same on every rank).
            seed_everything(cfg.seed + self.env.rank)
        if self.step >= cfg.steps:
            if self.env.is_main:
                print(
                    f"--resume: {self.run_dir} already finished ({self.step} of {cfg.steps} steps); nothing to do"
                )
            return TrainResult(self.step, float("nan"), self.train_seconds, self.run_dir, already_done=True)
        self._open_logs(self.step)
        if changes:
            self.log(
                {
                    "step": self.step,
                    "split": "config_change",
                    "changed": {k: list(v) for k, v in changes.items()},
                }
            )

        self.model.train()
        autocast = runtime.autocast(self.precision, self.device)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.env.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        loss_value = float("nan")
        consecutive_bad = 0
        kernel_choices_reported = 0
        while self.step < cfg.steps:
            started = time.perf_counter()
            sums = torch.zeros(
                3, dtype=torch.float64
            )  # loss, aux_loss, lm_loss, weighted sums over micro-batches
            frames = 0
            micro_batches, weights, step_tokens = self._step_batches()
            for micro, (batch, weight) in enumerate(zip(micro_batches, weights, strict=True)):
                frames += self.count_frames(batch)
                batch = to_device(batch, self.device)
                last = micro == len(micro_batches) - 1
                sync = (
                    contextlib.nullcontext()
                    if last or not hasattr(self.model, "no_sync")
                    else self.model.no_sync()
                )
                with sync:
                    with autocast:
                        out = self.objective(self.model, batch)
                    self.scaler.scale(out.loss * weight).backward()
                lm_loss = getattr(out, "lm_loss", None)
                parts = [out.loss, out.aux_loss, out.loss if lm_loss is None else lm_loss]
                sums += torch.stack([p.detach().double().cpu() for p in parts]) * weight
            self.scaler.unscale_(self.optimizer)
            # clip_norm 0: the norm is still measured (max_norm=inf never scales), for the non-finite check
            max_norm = cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            if not self._finite_step(sums[0].item(), float(grad_norm)):
                consecutive_bad += 1
                self._skip_non_finite(sums[0].item(), float(grad_norm), consecutive_bad)
                continue
            consecutive_bad = 0
            lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            elapsed = time.perf_counter() - started
            self.train_seconds += elapsed
            # measured outside the timed step; main rank only, on the unwrapped model (no DDP collectives)
            conflict = self.tracker.maybe_update(self.step) if self.tracker and self.env.is_main else None
            kernel_choices_reported = self._report_kernel_choices(kernel_choices_reported)

            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                loss_value, aux_value, lm_value = mean_across_ranks(sums, self.env).tolist()
                frames_per_s = sum_across_ranks(frames, self.env) / max(elapsed, 1e-9)
                self.log(
                    {
                        "step": self.step,
                        "loss": loss_value,
                        "aux_loss": aux_value,
                        "lm_loss": lm_value,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "frames_per_s": round(frames_per_s, 1),
                        **(
                            {"tokens": step_tokens, "micro_batches": len(micro_batches)}
                            if cfg.tokens_per_step
                            else {}
                        ),
                        "train_seconds": round(self.train_seconds, 3),
                        **getattr(self.stream, "log_stats", dict)(),  # e.g. skipped_clips
                        **self.objective.log_terms(),
                    }
                )
                bar.set_postfix(loss=f"{loss_value:.4f}", aux=f"{aux_value:.4f}", fps=f"{frames_per_s:.0f}")
            if conflict is not None:
                self.log({"step": self.step, "split": "grad", **self.tracker.log_record()})
            bar.update(1)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.run_eval()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()  # before the final evaluation: nothing an evaluation does can cost the run
        self.run_eval()
        for logger in self._loggers:
            logger.close()
        return TrainResult(
            self.step,
            loss_value,
            self.train_seconds,
            self.run_dir,
            non_finite_steps=self.non_finite_steps,
            eval_error=self.eval_error,
        )

    def _step_batches(self) -> tuple[list[Any], list[float], int]:
        """The micro-batches of one optimizer step and the weight of each one's (mean) loss.

        ``grad_accum`` N: N batches, weight 1/N each. ``tokens_per_step`` T: batches until their supervised tokens
        (``labels != -100``; rows where a batch has no labels) reach T, each weighted by its share of the tokens of
        the whole step across all processes (``world_size * n_i / N``, as DDP then averages over the processes), so
        the step's gradient is that of the token-mean loss however the tokens fell into batches."""
        cfg = self.config
        if not cfg.tokens_per_step:
            return (
                [next(self.stream) for _ in range(cfg.grad_accum)],
                [1.0 / cfg.grad_accum] * cfg.grad_accum,
                0,
            )
        batches, counts = [], []
        while sum(counts) < cfg.tokens_per_step:
            batches.append(next(self.stream))
            counts.append(supervised_tokens(batches[-1]))
        total = sum_across_ranks(float(sum(counts)), self.env)
        return batches, [self.env.world_size * n / max(total, 1.0) for n in counts], int(total)

    def _report_kernel_choices(self, already: int) -> int:
        """Say what ``kernel: auto`` chose for the shapes met since the last report (printed and in
        metrics.jsonl as ``split: kernel_choice``); returns how many choices are reported now."""
        choices = kernels.auto_choices()
        if len(choices) > already and self.env.is_main:
            for choice in choices[already:]:
                tqdm.write(choice.describe())
            self.log(
                {
                    "step": self.step,
                    "split": "kernel_choice",
                    "choices": [dataclasses.asdict(c) for c in choices[already:]],
                }
            )
        return len(choices)

    # ------------------------------------------------------------------------------------ non-finite steps
    def _finite_step(self, loss_sum: float, grad_norm: float) -> bool:
        """Whether every rank saw a finite loss and gradient norm (under fp16 the grad scaler handles inf
        gradients itself, so only the loss counts there)."""
        finite = math.isfinite(loss_sum) and (self.scaler.is_enabled() or math.isfinite(grad_norm))
        if self.env.enabled:
            finite = sum_across_ranks(float(not finite), self.env) == 0
        return finite

    def _skip_non_finite(self, loss: float, grad_norm: float, consecutive: int) -> None:
        """Drop this update (``nan_policy=skip``) or stop the run (``stop``, or ``nan_patience`` in a row)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # fp16: closes this iteration's unscale_ (lowering the scale); a no-op otherwise
        policy = self.config.nan_policy
        where = f"step {self.step + 1}: loss {loss}, gradient norm {grad_norm}"
        if policy == "raise":
            raise FloatingPointError(f"non-finite training values at {where} (nan_policy=raise)")
        self.non_finite_steps += 1
        self.log({"step": self.step, "split": "non_finite", "loss": loss, "grad_norm": grad_norm,
                  "non_finite_steps": self.non_finite_steps})  # fmt: skip
        if policy == "stop" or consecutive >= self.config.nan_patience:
            latest = ckpt.latest_checkpoint(self.checkpoint_root)
            then = (
                f"the last good checkpoint {latest} is intact: resume it with a lower optim.lr and "
                "--resume --allow-config-change optim.lr"
                if latest
                else "no checkpoint was written: start again with a lower optim.lr (or more schedule.warmup_steps)"
            )
            raise NonFiniteTraining(
                f"training stopped: non-finite values {consecutive} step(s) in a row at {where} "
                f"(nan_policy={policy}, nan_patience={self.config.nan_patience}); {then}"
            )
