"""What must not change across a ``--resume``, and the one-line diff when it did.

A fingerprint is a flat ``{dotted key: value}`` dict: the model section, optimizer and schedule, seed, steps,
batch size and duration budget, gradient accumulation, world size, and each training manifest's size and sha256 (plus the number of
training items kept). Logging, checkpointing, evaluation, precision and output settings are left out: they change
nothing a checkpoint holds.

    diff = fingerprint_diff(saved, current)       # {"optim.lr": (0.0003, 0.01)}
    check_resume(saved, current, allow=["optim.lr"])  # raises ResumeMismatch unless every change is allowed
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audiomoe.config import ConfigError, to_dict
from audiomoe.data.sources import Source, as_source
from audiomoe.training.checkpoint import sha256_of
from audiomoe.training.config import TrainConfig

# Sections and keys of TrainConfig that a checkpoint depends on.
# The batch budget keys decide which clips share a batch, so the sampler's saved position means nothing under
# another budget; data.num_workers does not (batches are the same with any worker count).
FINGERPRINT_KEYS = (
    "model", "objective", "optim", "schedule", "seed", "steps", "grad_accum", "tokens_per_step", "data.batch_size",
    "data.max_batch_seconds", "data.quadratic_duration", "data.shuffle_buffer",
)  # fmt: skip
# Changes no flag can make safe: the checkpoint's weights and optimizer state belong to this model.
NEVER_CHANGEABLE = ("model",)
# Another number of processes is a reshard, not a change, when processes x grad_accum (the micro-batches of one
# optimizer step) stays the same: every step then takes the same batches (see Trainer.load_checkpoint).
RESHARD_KEYS = ("world_size", "grad_accum")
STEP_KEY = "micro_batches_per_step"
# Keys added after checkpoints were first written: absent from an older one means the default then in force
# (for optim.implementation the for-loop AdamW ran then; auto's fused kernel continues it equal within rounding).
ADDED_LATER = {"tokens_per_step": 0, "optim.implementation": "auto"}


class ResumeMismatch(ConfigError):
    """``--resume`` with a configuration the checkpoint was not written with."""


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value


def config_fingerprint(
    config: TrainConfig, world_size: int = 1, train_items: int | None = None
) -> dict[str, Any]:
    """The flat fingerprint of ``config`` (manifests are hashed when they exist)."""
    data = to_dict(config)
    out: dict[str, Any] = {}
    for key in FINGERPRINT_KEYS:
        value: Any = data
        for part in key.split("."):
            value = value[part]
        _flatten(value, key, out)
    for index, spec in enumerate(config.data.train):
        out[f"data.train[{index}]"] = _source_fingerprint(as_source(spec))
    if train_items is not None:
        out["data.train_items"] = train_items
    out["world_size"] = world_size
    out[STEP_KEY] = world_size * config.grad_accum
    return out


def _source_fingerprint(source: Source) -> str:
    """A manifest file by size and sha256, a dataset directory by its files' sizes, plus what a source mapping
    changes (weight, columns, default task); a plain path keeps the fingerprint of earlier runs."""
    path = Path(source.path)
    if path.is_file():
        text = f"{path.name} ({path.stat().st_size} bytes, sha256 {sha256_of(path)[:16]})"
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        text = f"{path.name}/ ({len(files)} files, {sum(p.stat().st_size for p in files)} bytes)"
    else:
        text = str(path)
    extras = [f"weight {source.weight:g}"] if source.weight != 1.0 else []
    extras += [f"columns {dict(sorted(source.columns.items()))}"] if source.columns else []
    extras += [f"task {source.task}"] if source.task else []
    return f"{text} [{', '.join(extras)}]" if extras else text


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for every key whose value differs (missing = ``None``)."""
    return {
        k: (saved.get(k), current.get(k))
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    }


def _covered(key: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "[") for p in prefixes)


def check_resume(
    saved: dict[str, Any], current: dict[str, Any], allow: list[str], where: str
) -> dict[str, tuple[Any, Any]]:
    """The allowed changes between ``saved`` (the checkpoint at ``where``) and ``current``; raises
    :class:`ResumeMismatch` with a one-line diff for any other change. ``allow`` holds keys or section prefixes."""
    if not saved:  # a checkpoint from before fingerprints: nothing to compare
        return {}
    diff = fingerprint_diff(saved, current)
    for key, default in ADDED_LATER.items():
        if key not in saved and current.get(key) == default:
            diff.pop(key, None)
    if STEP_KEY not in saved:  # written before the key existed: compare the rest as before
        diff.pop(STEP_KEY, None)
    elif STEP_KEY not in diff:
        diff = {k: v for k, v in diff.items() if k not in RESHARD_KEYS}
    frozen = {k: v for k, v in diff.items() if _covered(k, NEVER_CHANGEABLE)}
    if frozen:
        raise ResumeMismatch(
            f"--resume: {where} was written for another model ({_describe(frozen)}); its weights cannot be loaded "
            "into this one: train it in another out_dir (to start from the old model: model.path=RUN/model)"
        )
    if any(_covered(k, allow) for k in RESHARD_KEYS):  # micro_batches_per_step follows from those two
        allow = [*allow, STEP_KEY]
    refused = {k: v for k, v in diff.items() if not _covered(k, allow)}
    if refused:
        keys = " ".join(sorted(k for k in refused if k != STEP_KEY))
        hint = ""
        if STEP_KEY in refused and saved.get(STEP_KEY):
            hint = (
                f" (another number of processes resumes exactly when processes x grad_accum stays "
                f"{saved[STEP_KEY]}: set grad_accum to {saved[STEP_KEY]} / processes)"
            )
        raise ResumeMismatch(
            f"--resume: the config differs from the one {where} was written with: {_describe(refused)}{hint}; "
            f"restore it, or accept the change with --allow-config-change {keys}"
        )
    return diff


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in diff.items())
