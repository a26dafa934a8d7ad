"""``AudiomoeConfig``: the transformers config of an audiomoe LALM (``model_type: "audiomoe"``).

Sub-configs, as transformers' composite configs (Llava, Qwen2-Audio) hold them:

- ``encoder_config``: the audio encoder's transformers config (e.g. ``WhisperConfig``);
- ``adapter_config``: the adapter's config dict (its ``type`` names an entry of the adapter registry);
- ``text_config``: the LLM's transformers config (e.g. ``Qwen2Config``), what ``get_text_config()`` returns.

``audiomoe`` holds the rest of the resolved :class:`~audiomoe.models.lalm.LALMConfig` (encoder type, processor,
LLM dtype, seed …) with the two component paths blanked: a saved directory never names a machine-local path.
``sources`` (compact form only) maps a component that is not stored in the weights file to its portable
reference and checksum (see :mod:`audiomoe.models.hf.export`); ``lora`` maps a component to the PEFT adapter
folder (relative to the model directory) that loading puts onto it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from audiomoe.config import from_dict, to_dict
from audiomoe.models.lalm import LALMConfig
from audiomoe.models.llm import config_to_dict, hf_config_from_dict


def _sub_config(value: PretrainedConfig | dict[str, Any] | None, where: str) -> PretrainedConfig | None:
    if value is None or isinstance(value, PretrainedConfig):
        return value
    return hf_config_from_dict(value, where)


class AudiomoeConfig(PretrainedConfig):
    model_type = "audiomoe"
    sub_configs = {"encoder_config": PretrainedConfig, "text_config": PretrainedConfig}

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        adapter_config: dict[str, Any] | None = None,
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        audiomoe: dict[str, Any] | None = None,
        audio_token_id: int | None = None,
        sources: dict[str, dict[str, str]] | None = None,
        lora: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.encoder_config = _sub_config(encoder_config, "encoder_config")
        self.adapter_config = dict(adapter_config or {"type": "linear"})
        self.text_config = _sub_config(text_config, "text_config")
        self.audiomoe = dict(audiomoe or {})
        self.audio_token_id = audio_token_id
        self.sources = dict(sources or {})
        self.lora = dict(lora or {})
        super().__init__(**kwargs)

    @classmethod
    def from_lalm_config(cls, config: LALMConfig, **kwargs: Any) -> AudiomoeConfig:
        """``LALMConfig`` whose encoder and LLM carry transformers config dicts -> ``AudiomoeConfig``."""
        rest = to_dict(config)
        encoder, llm = rest.pop("encoder"), rest.pop("llm")
        rest.pop("adapter")
        rest.pop("lora")  # LoRA travels as PEFT adapter folders (``lora``), not as injected layers
        encoder_dict, llm_dict = encoder.pop("config"), llm.pop("config")
        encoder["path"] = llm["path"] = ""
        return cls(
            encoder_config=encoder_dict,
            adapter_config=config.adapter,
            text_config=llm_dict,
            audiomoe={"encoder": encoder, "llm": llm, **rest},
            **kwargs,
        )

    def to_lalm_config(self) -> LALMConfig:
        """The :class:`LALMConfig` that builds this model's encoder, adapter and LLM from their configs."""
        data = {key: value for key, value in self.audiomoe.items()}
        encoder = dict(data.pop("encoder", {}))
        llm = dict(data.pop("llm", {}))
        if self.encoder_config is not None:
            encoder["config"] = config_to_dict(self.encoder_config)
        if self.text_config is not None:
            llm["config"] = config_to_dict(self.text_config)
        config = from_dict(LALMConfig, {**data, "encoder": encoder, "llm": llm}, "audiomoe")
        return dataclasses.replace(config, adapter=dict(self.adapter_config))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("encoder_config", "text_config"):
            value = getattr(self, key)
            out[key] = value.to_dict() if isinstance(value, PretrainedConfig) else value
        return out
