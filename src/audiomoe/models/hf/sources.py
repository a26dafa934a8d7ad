"""Portable references to frozen components that a compact model directory does not store, and their checksums.

A reference is either ``root:<relative path>`` (a directory below a declared models root: the ``model_root``
argument, else the ``AUDIOMOE_MODEL_ROOT`` environment variable) or a name the component's builder resolves
itself (an installed model such as ``smollm2-135m-instruct`` or Whisper ``tiny.en``; a Hub-style id). Never a
machine-local absolute path. The checksum is SHA-256 over the component's tensors (sorted names, dtype, shape,
bytes), so it does not depend on how the referenced files are sharded; loading recomputes and compares it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from audiomoe.models.base import build_encoder
from audiomoe.models.lalm import LALMConfig
from audiomoe.models.llm import build_llm

ROOT_ENV = "AUDIOMOE_MODEL_ROOT"
ROOT_PREFIX = "root:"


def state_checksum(module: nn.Module) -> str:
    """SHA-256 over ``module``'s state dict: names (sorted), dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def declared_root(model_root: str | Path | None) -> Path | None:
    root = model_root if model_root is not None else os.environ.get(ROOT_ENV)
    return Path(root).expanduser().resolve() if root else None


def portable_reference(path: str, model_root: str | Path | None, where: str) -> str:
    """``path`` as saved in a compact directory: relative to the declared root, or a name as given."""
    local = Path(path).expanduser()
    if not local.is_dir():
        return path  # a name its builder resolves (installed model, Hub-style id)
    root = declared_root(model_root)
    resolved = local.resolve()
    if root is None or not resolved.is_relative_to(root):
        raise ValueError(
            f"{where} = {path} is a machine-local directory; declare the models root it lies under "
            f"(model_root=..., or {ROOT_ENV}) or save with include_frozen=True"
        )
    return ROOT_PREFIX + resolved.relative_to(root).as_posix()


def resolve_reference(reference: str, model_root: str | Path | None) -> str:
    """The path or name a builder takes for ``reference``."""
    if not reference.startswith(ROOT_PREFIX):
        return reference
    root = declared_root(model_root)
    if root is None:
        raise FileNotFoundError(
            f"reference {reference!r} is relative to a models root: set {ROOT_ENV} or pass model_root=..."
        )
    return str(root / reference[len(ROOT_PREFIX) :])


def build_referenced(config: LALMConfig, component: str, path: str) -> nn.Module:
    """Build ``component`` (``encoder`` / ``llm``) of ``config`` from ``path`` with its own weights."""
    if component == "encoder":
        return build_encoder(dataclasses.replace(config.encoder, path=path, config=None))
    if component == "llm":
        return build_llm(dataclasses.replace(config.llm, path=path, config=None))
    raise ValueError(f"sources: unknown component {component!r}; expected encoder or llm")


def load_sources(model: nn.Module, config: LALMConfig, sources: dict[str, dict[str, str]], root) -> None:
    """Fill each referenced component of ``model`` from its reference and check its checksum."""
    for component, source in sources.items():
        path = resolve_reference(source["reference"], root)
        built = build_referenced(config, component, path)
        getattr(model, component).load_state_dict(built.state_dict())
        found = state_checksum(getattr(model, component))
        if found != source["sha256"]:
            raise ValueError(
                f"sources.{component}: {path} has checksum {found[:12]}… but the model was saved with "
                f"{source['sha256'][:12]}…; point the reference at the same weights the model was trained on"
            )
