"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``RUN/checkpoints/step_0000100/`` holding

- ``model.safetensors``: trainable parameters and buffers (frozen weights are rebuilt from the model config);
- ``trainer.pt``: optimizer, LR scheduler, grad scaler, sampler position and step (loaded with
  ``torch.load(weights_only=True)``: nothing is unpickled);
- ``rng_rank{r}.pt``: python / numpy / torch RNG states of every process, so dropout and sampling continue exactly.

With ``checkpoint_format: sharded`` the weights and optimizer state are instead ``model.dcp/``: a
``torch.distributed.checkpoint`` directory each rank writes its own shards into (nothing is gathered on one rank),
which loads into any number of processes (DCP reshards on load); ``trainer.pt`` then holds no optimizer.

Why a directory renamed into place: the files are written into ``.tmp-step_...`` first, fsynced, and the
directory is renamed with ``os.replace``, so a crash mid-save leaves either the previous checkpoints untouched or
a stale temp directory that is ignored and removed, never a half-written ``step_*`` directory.

Each checkpoint also carries ``checkpoint.json``, written last: the size and sha256 of every other file and the
run's *fingerprint* (what must not change across a resume, see :mod:`audiomoe.training.fingerprint`).
:func:`resumable_checkpoint` verifies checkpoints newest first and returns the newest intact one with the reasons
the newer ones were skipped (truncated, tampered, non-finite weights). Storage failures while saving (disk full,
read-only, permissions) raise :class:`StorageError` after removing the temp directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE = "model.safetensors"
SHARDED_DIR = "model.dcp"  # checkpoint_format: sharded
TRAINER_FILE = "trainer.pt"
MANIFEST_FILE = "checkpoint.json"
TEMP_PREFIX = ".tmp-"


class StorageError(OSError):
    """Saving failed because of the storage (disk full, read-only, permissions): an environment problem."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used (truncated, tampered, non-finite weights); the message says which and why."""


def storage_error(err: OSError, path: Path, what: str) -> StorageError:
    """A one-line :class:`StorageError` for ``err`` while writing ``path``: the path, the free space, the fix."""
    try:
        free = f"{shutil.disk_usage(_existing_parent(path)).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    if err.errno == errno.ENOSPC:
        fix = "free some space or set out_dir to a larger disk"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the folder writable or set out_dir to a writable folder"
    else:
        fix = "check the disk and the folder's permissions"
    reason = err.strerror or str(err)
    return StorageError(err.errno or 0, f"cannot write {what} to {path}: {reason} ({free}); {fix}")


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(checkpoint_root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``checkpoint_root`` as ``(step, path)``, oldest first (temp dirs ignored; not
    verified: see :func:`resumable_checkpoint`)."""
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, fingerprint: dict[str, Any] | None = None) -> None:
    """``checkpoint.json``: size and sha256 of every file in ``directory`` (and the run's fingerprint)."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    text = json.dumps({"files": files, "fingerprint": fingerprint or {}}, indent=1, allow_nan=False)
    (directory / MANIFEST_FILE).write_text(text + "\n")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The checkpoint's ``checkpoint.json``; raises :class:`CheckpointError` naming the file when it is unusable."""
    path = directory / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing (an interrupted save or a copy without it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CheckpointError(f"{path} is corrupt (no 'files' table)")
    return data


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check every file against ``checkpoint.json`` (size, sha256) and the weights for non-finite values.

    Returns the manifest; raises :class:`CheckpointError` with the first problem. A checkpoint written before
    manifests existed (no ``checkpoint.json``) is accepted when its files load.
    """
    if not (directory / MANIFEST_FILE).exists():
        manifest: dict[str, Any] = {"files": {}, "fingerprint": {}}
    else:
        manifest = read_manifest(directory)
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(
                f"{path} is truncated or changed ({size} bytes, the manifest says {entry.get('size')})"
            )
        if sha256_of(path) != entry.get("sha256"):
            raise CheckpointError(
                f"{path} does not match its sha256 in {MANIFEST_FILE} (changed after it was written)"
            )
    if is_sharded(directory):  # its shards were checked for non-finite values as they were written
        if not manifest["files"]:
            raise CheckpointError(f"{directory / MANIFEST_FILE} is missing (an interrupted save)")
        return manifest
    try:
        tensors = load_tensors(directory / MODEL_FILE)
        if not manifest["files"]:  # nothing verified its bytes: check that it loads
            load_object(directory / TRAINER_FILE)
    except Exception as err:  # safetensors / torch raise many types for a damaged file
        raise CheckpointError(
            f"{directory} does not load ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"{directory / MODEL_FILE} holds non-finite weights ({bad})")
    return manifest


def non_finite(tensors: dict[str, torch.Tensor]) -> str:
    """``""`` when every floating tensor is finite, else ``"name: 3 of 64 values"`` for the first bad one."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            return f"{name}: {count} of {tensor.numel()} values NaN/inf"
    return ""


def resumable_checkpoint(checkpoint_root: str | Path) -> tuple[Path | None, dict[str, Any], list[str]]:
    """The newest checkpoint that verifies, its manifest, and one line per newer checkpoint skipped and why."""
    skipped: list[str] = []
    for _, path in reversed(list_checkpoints(checkpoint_root)):
        try:
            return path, verify_checkpoint(path), skipped
        except CheckpointError as err:
            skipped.append(f"skipped {path.name}: {err}")
    return None, {}, skipped


def clean_stale(checkpoint_root: str | Path) -> list[Path]:
    """Remove what interrupted saves leave: ``.tmp-*`` directories and ``step_*`` directories without
    ``trainer.pt`` (written last, so such a directory never held a usable checkpoint). Returns what was removed."""
    root = Path(checkpoint_root)
    removed = []
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        stale_step = STEP_DIR.match(path.name) and path.is_dir() and not (path / TRAINER_FILE).is_file()
        if path.is_dir() and (path.name.startswith(TEMP_PREFIX) or stale_step):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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
    return Path(checkpoint_root) / f"{TEMP_PREFIX}{step_dir_name(step)}"


def begin_checkpoint(checkpoint_root: str | Path, step: int) -> Path:
    """Create a clean temp directory for the checkpoint of ``step`` (call on rank 0, then barrier)."""
    tmp = temp_dir_for(checkpoint_root, step)
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier save of the same step
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(
    checkpoint_root: str | Path, step: int, keep_last: int, fingerprint: dict[str, Any] | None = None
) -> Path:
    """Write ``checkpoint.json``, fsync everything in the temp directory, rename it into place, then drop all but
    the newest ``keep_last``."""
    root = Path(checkpoint_root)
    tmp = temp_dir_for(root, step)
    write_manifest(tmp, fingerprint)
    for path in tmp.rglob("*"):  # model.dcp/ holds files of its own
        _fsync_file(path) if path.is_file() else _fsync_dir(path)
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
    bad = non_finite(unique)
    if bad:
        raise CheckpointError(f"refusing to write non-finite weights to {path} ({bad})")
    with write_errors_as_os_errors(path):
        save_file(unique, str(path))


def is_sharded(directory: Path) -> bool:
    return (Path(directory) / SHARDED_DIR).is_dir()


def _local(tensor: Any) -> Any:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def save_sharded(state: dict[str, Any], path: Path, any_rank_bad: Any) -> None:
    """Collective: every rank writes its shards of ``state`` (``{"model": ..., "optim": ...}``, the sharded
    state dicts of ``get_state_dict``) to the DCP directory ``path``. ``any_rank_bad(flag) -> bool`` tells every
    rank whether any found a non-finite value in its local shards, so all refuse together (no rank left waiting
    in the collective write)."""
    import torch.distributed.checkpoint as dcp

    local = {k: _local(v) for k, v in state["model"].items() if isinstance(_local(v), torch.Tensor)}
    bad = non_finite(local)
    if any_rank_bad(bool(bad)):
        raise CheckpointError(f"refusing to write non-finite weights to {path} ({bad or 'on another rank'})")
    with write_errors_as_os_errors(path):
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)))


def load_sharded(state: dict[str, Any], path: Path) -> None:
    """Collective, in place: fill ``state`` (this run's sharded state dicts, any number of processes) from the
    DCP directory ``path``."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))


def load_sharded_model(directory: Path, model: torch.nn.Module) -> None:
    """One process, no process group: load the weights of a sharded checkpoint ``directory`` into a whole
    ``model`` (how rank 0 exports an FSDP run). The keys saved are the trainable ones; frozen ones keep the
    values the model was built with."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(Path(directory) / SHARDED_DIR))
    saved = {
        k.removeprefix("model.") for k in reader.read_metadata().state_dict_metadata if k.startswith("model.")
    }
    target = {k: v for k, v in model.state_dict().items() if k in saved}
    dcp.load({"model": target}, storage_reader=reader, no_dist=True)
    model.load_state_dict(target, strict=False)


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


@contextlib.contextmanager
def write_errors_as_os_errors(path: Path) -> Iterator[None]:
    """torch.save reports a full disk as ``RuntimeError: ... PytorchStreamWriter failed writing file`` and
    safetensors as its own error: make them the ``OSError`` they are, so they are storage errors (exit 3)."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        try:
            full = shutil.disk_usage(_existing_parent(path)).free < 2**20
        except OSError:
            full = False
        reason = "No space left on device" if full else f"write failed ({str(err).splitlines()[0][:200]})"
        raise OSError(errno.ENOSPC if full else errno.EIO, reason, str(path)) from err


def save_object(obj: Any, path: Path) -> None:
    with write_errors_as_os_errors(path):
        torch.save(obj, path)


def load_object(path: Path) -> Any:
    """Never unpickles arbitrary objects: plain containers, numbers, strings and tensors only."""
    return torch.load(path, map_location="cpu", weights_only=True)
