"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``RUN/checkpoints/step_0000100/`` holding

- ``model.safetensors``: trainable parameters and buffers (frozen weights are rebuilt from the model config);
- ``trainer.pt``: optimizer, LR scheduler, grad scaler, sampler position and step (loaded with
  ``torch.load(weights_only=True)``: nothing is unpickled);
- ``rng_rank{r}.pt``: python / numpy / torch RNG states of every process, so dropout and sampling continue exactly.

Why a directory renamed into place: the files are written into ``.tmp-step_...`` first, fsynced, and the
directory is renamed with ``os.replace``, so a crash mid-save leaves either the previous checkpoints untouched or
a stale temp directory that is ignored and removed, never a half-written ``step_*`` directory.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(checkpoint_root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``checkpoint_root`` as ``(step, path)``, oldest first (temp dirs ignored)."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / TRAINER_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoint_root: str | Path) -> Path | None:
    found = list_checkpoints(checkpoint_root)
    return found[-1][1] if found else None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_dir_for(checkpoint_root: str | Path, step: int) -> Path:
    """Deterministic temp name so every rank of a distributed run writes into the same directory."""
    return Path(checkpoint_root) / f".tmp-{step_dir_name(step)}"


def begin_checkpoint(checkpoint_root: str | Path, step: int) -> Path:
    """Create a clean temp directory for the checkpoint of ``step`` (call on rank 0, then barrier)."""
    tmp = temp_dir_for(checkpoint_root, step)
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save of the same step
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(checkpoint_root: str | Path, step: int, keep_last: int) -> Path:
    """fsync everything in the temp directory, rename it into place, then drop all but the newest ``keep_last``."""
    root = Path(checkpoint_root)
    tmp = temp_dir_for(root, step)
    for path in tmp.iterdir():
        _fsync_file(path)
    _fsync_dir(tmp)
    final = root / step_dir_name(step)
    if final.exists():  # re-saving a step (e.g. a resumed run that ends where the last one did)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for _, old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    return final


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors refuses aliased tensors (tied embeddings): keep the first name of each storage."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    unique = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        unique[name] = tensor.detach().contiguous().cpu()
    save_file(unique, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts (numpy's key array becomes a tensor)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_object(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def load_object(path: Path) -> Any:
    """Never unpickles arbitrary objects: plain containers, numbers, strings and tensors only."""
    return torch.load(path, map_location="cpu", weights_only=True)
