"""The language model side: any transformers ``AutoModelForCausalLM``, from a local directory or a config dict.

``LLMConfig.path`` is a local transformers directory (``config.json`` + safetensors), or the name of a model that
an installed package provides (:data:`LLM_SOURCES`, e.g. ``smollm2-135m-instruct``); with an empty ``path`` the
model is built random-init from ``LLMConfig.config`` (a transformers config dict with ``model_type``), which is
what the tiny preset and the tests use. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from audiomoe.config import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class LLMConfig:
    """Which causal LM and from where (see the module docstring)."""

    path: str = ""
    config: dict[str, Any] | None = None
    tokenizer: str = ""  # a directory or "builtin:<name>"; empty = the LLM's own directory
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"


def _smollm2_dir() -> Path:
    # Imported lazily: the module (and its gguf dependency) is needed only for this model.
    return Path(importlib.import_module("audiomoe.models.smollm2").smollm2_dir())


# Named models provided by installed packages (a registry, resolved to a local transformers directory).
LLM_SOURCES: dict[str, Callable[[], Path]] = {"smollm2-135m-instruct": _smollm2_dir}


def resolve_llm_path(path: str) -> Path:
    """A local directory as given, or a :data:`LLM_SOURCES` name resolved to its (cached) directory."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if path in LLM_SOURCES:
        return LLM_SOURCES[path]()
    raise FileNotFoundError(
        f"llm.path {path!r} is not a directory; give a local transformers directory (config.json + weights) "
        f"or one of {sorted(LLM_SOURCES)}"
    )


def hf_config_from_dict(data: dict[str, Any], where: str) -> PretrainedConfig:
    """A transformers config dict (with ``model_type``) -> its config class."""
    data = dict(data)
    model_type = data.pop("model_type", None)
    data.pop("transformers_version", None)
    if not model_type:
        raise ConfigError(f"{where}: a config dict needs model_type (e.g. qwen2, llama)")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: not a valid transformers config: {err}") from None


def config_to_dict(config: PretrainedConfig) -> dict[str, Any]:
    """The config dict that :func:`hf_config_from_dict` rebuilds from (for the saved resolved config)."""
    data = config.to_dict()
    for key in ("transformers_version", "dtype", "torch_dtype", "_name_or_path", "architectures"):
        data.pop(key, None)
    return data


def build_llm(config: LLMConfig) -> PreTrainedModel:
    """``LLMConfig`` -> a causal LM in eval mode with the configured dtype."""
    dtype = DTYPES[config.dtype]
    if config.path:
        path = resolve_llm_path(config.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; save the LLM with save_pretrained first")
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, attn_implementation=config.attn_implementation
        )
    elif config.config:
        hf_config = hf_config_from_dict(config.config, "llm.config")
        hf_config._attn_implementation = config.attn_implementation
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    else:
        raise ConfigError(
            "llm: give llm.path (a local model directory) or llm.config (a transformers config dict)"
        )
    return model.eval()


def tokenizer_source(config: LLMConfig) -> str:
    """Where the tokenizer comes from: ``llm.tokenizer`` if set, else the LLM's directory."""
    if config.tokenizer:
        return config.tokenizer
    if config.path:
        return str(resolve_llm_path(config.path))
    raise ConfigError(
        "llm.tokenizer must be set when the LLM is built from llm.config (e.g. 'builtin:bytes')"
    )
