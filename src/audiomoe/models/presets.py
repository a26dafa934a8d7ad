"""Named model recipes (a registry): ``build_preset("tiny", adapter_type="moe") -> LALMConfig``.

- ``tiny``: random-init Whisper-architecture encoder (2 layers, d 64) + Qwen2-architecture LLM (~2M parameters)
  with a byte tokenizer built in code. Seconds to build; for tests and the quick demo.
- ``whisper-tiny-en``: the real pretrained Whisper tiny.en encoder (installed weights package, converted offline)
  + a small random-init Qwen2 LLM trained with the adapter; the CPU demo.
- ``real-small``: real Whisper tiny.en encoder (``encoder.path=base`` for Whisper base) + real
  SmolLM2-135M-Instruct with LoRA: the smallest fully pretrained LALM, the paper's setting in miniature.

Every preset trains the adapter and keeps the encoder frozen, as the paper's front end does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audiomoe.config import ConfigError, apply_overrides, deep_merge, from_dict
from audiomoe.models.lalm import LALMConfig


def _tiny_whisper(d_model: int = 64, layers: int = 2, heads: int = 4) -> dict[str, Any]:
    return {
        "num_mel_bins": 80,
        "d_model": d_model,
        "encoder_layers": layers,
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": 2 * d_model,
        "max_source_positions": 1500,  # 30 s windows, as real Whisper
        # Decoder fields only matter when the config builds a full WhisperModel (the encoder ignores them).
        "decoder_layers": 1,
        "decoder_attention_heads": heads,
        "decoder_ffn_dim": 2 * d_model,
    }


def _small_qwen2(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "vocab_size": 259,  # builtin:bytes (the audio placeholder id lies past it: it is never embedded)
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "intermediate_size": intermediate,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "eos_token_id": 256,
        "pad_token_id": 257,
    }


# The LLM size `audiomoe demo` trains (Qwen2, hidden x layers): a 15-minute CPU budget for 4 arms x 3 seeds.
DEMO_LLM_SIZE = {
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 384,
}

# Width fields shrunk for the tiny preset, wherever an adapter's config has them (new adapters included).
TINY_ADAPTER_WIDTHS = {"hidden_dim": 128, "expert_hidden_dim": 128}
DEMO_ADAPTER_WIDTHS = {
    "hidden_dim": 1024,
    "expert_hidden_dim": 256,
}  # keeps the CPU demo's adapter ~LLM-sized


def _adapter(adapter_type: str, widths: dict[str, int] | None = None) -> dict[str, Any]:
    """The adapter's own defaults (downsampling included), with ``widths`` applied to the fields it has."""
    from audiomoe.adapters import ADAPTERS

    entry = ADAPTERS.get(adapter_type)
    names = {f.name for f in dataclasses.fields(entry.config_cls)} if entry else set()
    return {"type": adapter_type, **{k: v for k, v in (widths or {}).items() if k in names}}


def _tiny(adapter_type: str) -> dict[str, Any]:
    return {
        "encoder": {"type": "whisper", "config": _tiny_whisper()},
        "adapter": _adapter(adapter_type, TINY_ADAPTER_WIDTHS),
        "llm": {"config": _small_qwen2(192, 4, 6, 512), "tokenizer": "builtin:bytes"},
        "freeze": {"encoder": True, "adapter": False, "llm": False},
    }


def _whisper_tiny_en(adapter_type: str) -> dict[str, Any]:
    return {
        "encoder": {"type": "whisper", "path": "tiny.en"},
        "adapter": _adapter(adapter_type, DEMO_ADAPTER_WIDTHS),
        "llm": {"config": _small_qwen2(256, 4, 8, 768), "tokenizer": "builtin:bytes"},
        "freeze": {"encoder": True, "adapter": False, "llm": False},
    }


def _whisper_tiny_en_random(adapter_type: str) -> dict[str, Any]:
    """whisper-tiny-en's shapes with a random-init encoder of Whisper tiny.en's size (d_model 384, 4 layers,
    6 heads): for GPU checks and benchmarks on a machine without the weights package."""
    tiny_en = {**_tiny_whisper(d_model=384, layers=4, heads=6), "encoder_ffn_dim": 1536}
    return {**_whisper_tiny_en(adapter_type), "encoder": {"type": "whisper", "config": tiny_en}}


def _real_small(adapter_type: str) -> dict[str, Any]:
    return {
        "encoder": {"type": "whisper", "path": "tiny.en"},
        "adapter": _adapter(adapter_type),
        "llm": {"path": "smollm2-135m-instruct"},
        "freeze": {"encoder": True, "adapter": False, "llm": True},
        "lora": {"llm": True, "r": 8, "alpha": 16},
    }


@dataclass(frozen=True)
class Preset:
    description: str
    build: Callable[[str], dict[str, Any]]  # adapter type -> LALMConfig dict


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "random-init tiny Whisper encoder + ~2M-parameter Qwen2 LLM, byte tokenizer (tests)", _tiny
    ),
    "whisper-tiny-en": Preset(
        "real Whisper tiny.en encoder + small random-init Qwen2 LLM (CPU demo)", _whisper_tiny_en
    ),
    "whisper-tiny-en-random": Preset(
        "whisper-tiny-en's shapes, random-init encoder of tiny.en's size (GPU checks without weights)",
        _whisper_tiny_en_random,
    ),
    "real-small": Preset("real Whisper tiny.en encoder + real SmolLM2-135M-Instruct with LoRA", _real_small),
}


def build_preset(
    name: str, adapter_type: str = "linear", overrides: list[str] | None = None, **fields: Any
) -> LALMConfig:
    """Preset ``name`` with adapter ``adapter_type``; ``fields`` are merged into the config dict (nested dicts
    merge, e.g. ``adapter={"num_experts": 8}``), then dotted ``overrides`` (``"lora.r=16"``) apply."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
    data = deep_merge(PRESETS[name].build(adapter_type), fields)
    data = apply_overrides(data, overrides or [])
    return from_dict(LALMConfig, data)
