"""The training loop: plain PyTorch, readable top to bottom (nanoGPT style, no hidden framework).

The loop is generic over

- a model whose ``forward(**batch)`` returns an object with ``.loss`` (the objective: LM loss plus the weighted
  auxiliary loss, as :class:`~audiomoe.models.lalm.LALMOutput` defines it) and ``.aux_loss`` (logged), and
  optionally ``.lm_loss`` (logged);
- a :class:`~audiomoe.training.stream.BatchStream` (resumable), and optionally a dev ``evaluate(model) -> dict``.

Per optimizer step: ``grad_accum`` micro-batches under autocast (DDP gradient sync only on the last one), gradient
clipping, AdamW, warmup + cosine LR. Every ``log_every`` steps one JSON line goes to ``RUN/metrics.jsonl`` (and to
TensorBoard when installed); checkpoints are atomic and carry everything needed for an exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
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
from audiomoe.adapters.moe import attach_router_bias_update
from audiomoe.analysis.gradients import GradientConflictTracker
from audiomoe.config import ConfigError, save_yaml
from audiomoe.tensors import to_device
from audiomoe.training import checkpoint as ckpt
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


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay on matrices only (not on biases, norms, gates' 1-d params)."""
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
    return torch.optim.AdamW(
        groups, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps
    )


def items_in(batch: Any) -> int:
    """Default throughput unit: rows of the first tensor in the batch."""
    values = batch.values() if isinstance(batch, Mapping) else batch
    for value in values:
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 0


@dataclass
class TrainResult:
    step: int
    last_loss: float
    train_seconds: float
    run_dir: Path


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
        strategy = config.strategy if config.strategy != "auto" else "ddp"
        self.model = wrap_model(
            model, self.env, self.device, strategy, config.fsdp_wrap, config.find_unused_parameters
        )
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
        self._tb: Any = None

    # ----------------------------------------------------------------------------------------- checkpoints
    def _state_options(self) -> StateDictOptions:
        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)

    def save_checkpoint(self) -> Path | None:
        """Atomically write the checkpoint of the current step (collective: every rank calls it)."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self._state_options())
        if self.env.is_main:
            tmp = ckpt.begin_checkpoint(self.checkpoint_root, self.step)
        barrier(self.env)
        tmp = ckpt.temp_dir_for(self.checkpoint_root, self.step)
        ckpt.save_object(ckpt.rng_state(), tmp / f"rng_rank{self.env.rank}.pt")
        final = None
        if self.env.is_main:
            ckpt.save_tensors(model_state, tmp / ckpt.MODEL_FILE)
            trainer_state = {
                "step": self.step,
                "train_seconds": self.train_seconds,
                "world_size": self.env.world_size,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "stream": self.stream.state_dict(),
            }
            # trainer.pt is written last: list_checkpoints only counts directories that hold it.
            ckpt.save_object(trainer_state, tmp / ckpt.TRAINER_FILE)
        barrier(self.env)
        if self.env.is_main:
            final = ckpt.commit_checkpoint(self.checkpoint_root, self.step, self.config.keep_last)
        barrier(self.env)
        return final

    def load_checkpoint(self, path: Path) -> None:
        state = ckpt.load_object(path / ckpt.TRAINER_FILE)
        if state["world_size"] != self.env.world_size:
            raise ConfigError(
                f"{path} was written by {state['world_size']} processes but this run has {self.env.world_size}; "
                "an exact resume needs the same number of processes"
            )
        model_state = ckpt.load_tensors(path / ckpt.MODEL_FILE)
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=model_state,
            optim_state_dict=state["optimizer"],
            options=options,
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["stream"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        ckpt.set_rng_state(ckpt.load_object(path / f"rng_rank{self.env.rank}.pt"))

    # --------------------------------------------------------------------------------------------- logging
    def _open_logs(self, resumed_step: int) -> None:
        if not self.env.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(self.config, self.run_dir / "config.yaml")
        # A killed run may have logged steps after its last checkpoint: drop them so the file stays one curve.
        if self.metrics_path.exists():
            keep = [
                line
                for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resumed_step
            ]
            self.metrics_path.write_text("".join(line + "\n" for line in keep))
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tb = None
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def run_eval(self) -> dict[str, float]:
        """Dev evaluation on rank 0 with the unwrapped model (other ranks wait)."""
        results: dict[str, float] = {}
        if self.evaluate is not None and self.env.is_main:
            model = unwrap(self.model)
            was_training = model.training
            model.eval()
            with torch.no_grad(), runtime.autocast(self.precision, self.device):
                results = dict(self.evaluate(model))
            model.train(was_training)
            self.log({"step": self.step, "split": "dev", **results})
        barrier(self.env)
        return results

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        latest = ckpt.latest_checkpoint(self.checkpoint_root)
        if latest is not None and not resume:
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints (latest {latest.name}); "
                "pass --resume to continue it or choose another out_dir"
            )
        if resume and latest is not None:
            self.load_checkpoint(latest)  # restores the RNG states too
            if self.env.is_main:
                print(f"resumed from {latest} (step {self.step})")
        else:
            if resume and self.env.is_main:
                print(f"--resume: no checkpoint in {self.checkpoint_root}; starting from step 0")
            # Different dropout streams per rank; the model itself was built before this (same on every rank).
            seed_everything(cfg.seed + self.env.rank)
        self._open_logs(self.step)

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
        while self.step < cfg.steps:
            started = time.perf_counter()
            sums = torch.zeros(3, dtype=torch.float64)  # loss, aux_loss, lm_loss summed over micro-batches
            frames = 0
            for micro in range(cfg.grad_accum):
                batch = next(self.stream)
                frames += self.count_frames(batch)
                batch = to_device(batch, self.device)
                last = micro == cfg.grad_accum - 1
                sync = (
                    contextlib.nullcontext()
                    if last or not hasattr(self.model, "no_sync")
                    else self.model.no_sync()
                )
                with sync:
                    with autocast:
                        out = self.objective(self.model, batch)
                    self.scaler.scale(out.loss / cfg.grad_accum).backward()
                lm_loss = getattr(out, "lm_loss", None)
                parts = [out.loss, out.aux_loss, out.loss if lm_loss is None else lm_loss]
                sums += torch.stack([p.detach().double().cpu() for p in parts])
            self.scaler.unscale_(self.optimizer)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_norm)
                if cfg.optim.clip_norm > 0
                else torch.zeros(())
            )
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

            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                loss_value, aux_value, lm_value = (
                    mean_across_ranks(sums, self.env) / cfg.grad_accum
                ).tolist()
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
                        "train_seconds": round(self.train_seconds, 3),
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
        self.run_eval()
        self.save_checkpoint()
        if self._tb is not None:
            self._tb.close()
        return TrainResult(self.step, loss_value, self.train_seconds, self.run_dir)
