"""The model directory: its file names, finding it inside a run directory, and reading it without the model.

Shared by :mod:`audiomoe.models.lalm` (which writes and loads the whole model) and
:mod:`audiomoe.models.processor` (which needs only the length function), so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from audiomoe.adapters import build_adapter
from audiomoe.config import from_dict, load_yaml
from audiomoe.models.base import EncoderConfig, build_encoder

CONFIG_FILE = "lalm_config.yaml"
MANIFEST_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
MODEL_DIR = "model"  # a training run directory keeps its final model here


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a training run directory holding one under ``model/``."""
    directory = Path(path)
    if (directory / MODEL_DIR / CONFIG_FILE).is_file():
        return directory / MODEL_DIR
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{directory}: neither a model directory ({CONFIG_FILE}) nor a run directory ({MODEL_DIR}/)"
        )
    return directory


def read_json(path: Path) -> Any:
    """A JSON file of a model directory; a damaged one is a ``ValueError`` naming the file and the fix."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is corrupt ({err}); the model directory is damaged: copy it again or save it again"
        ) from None


def read_manifest(directory: Path) -> dict[str, Any]:
    """``checkpoint.json`` of a complete model directory (all three files present, a known format version)."""
    for name in (CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory}: no {name}; is this a directory written by save_pretrained?"
            )
    manifest = read_json(directory / MANIFEST_FILE)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / MANIFEST_FILE}: format_version "
            f"{manifest.get('format_version') if isinstance(manifest, dict) else None} unsupported"
        )
    return manifest


def audio_token_lengths_from_dir(directory: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The length function of a saved model, from encoder and adapter skeletons on the meta device (no weights)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    saved = load_yaml(directory / CONFIG_FILE)
    encoder_config = from_dict(EncoderConfig, saved.get("encoder", {}), "encoder")
    if manifest.get("encoder_config"):
        encoder_config = dataclasses.replace(encoder_config, path="", config=manifest["encoder_config"])
    return audio_token_lengths_of(encoder_config, saved["adapter"])


def audio_token_lengths_of(
    encoder_config: EncoderConfig, adapter_config: dict[str, Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The length function of an encoder + adapter, from skeletons on the meta device (no weights)."""
    with torch.device("meta"):
        encoder = build_encoder(encoder_config)
        adapter = build_adapter(adapter_config)

    def lengths(audio_lengths: torch.Tensor) -> torch.Tensor:
        return adapter.output_lengths(encoder.output_lengths(audio_lengths))

    return lengths
