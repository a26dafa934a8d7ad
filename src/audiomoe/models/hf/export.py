"""``AudioLanguageModel`` -> a transformers-native model directory (``audiomoe export``), or the native model in
memory (``audiomoe infer``).

A native directory holds ``config.json`` (``AudiomoeConfig`` with ``auto_map``), ``generation_config.json``,
``model.safetensors`` (keys ``encoder.…``, ``adapter.…``, ``llm.…`` as in ``AudioLanguageModel``), the processor
files, the remote-code files (:mod:`.bundle`) and, per component trained with LoRA, a PEFT adapter folder
(``lora/`` for the LLM, ``encoder_lora/`` for the encoder) holding ``adapter_config.json`` and
``adapter_model.safetensors``; with ``merge_lora`` the LoRA is merged into the component's weights instead and no
folder is written. ``include_frozen=True`` (the default) stores every weight; ``False`` stores a portable
reference and a checksum (:mod:`.sources`) for each frozen component loaded from a path.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import GenerationConfig

from audiomoe.models.directory import MODEL_DIR, resolve_model_dir
from audiomoe.models.hf.bundle import auto_map, custom_pipelines, processor_auto_map, write_remote_code
from audiomoe.models.hf.configuration_audiomoe import AudiomoeConfig
from audiomoe.models.hf.modeling_audiomoe import AudiomoeForConditionalGeneration
from audiomoe.models.hf.processing_audiomoe import AudiomoeProcessor
from audiomoe.models.hf.sources import portable_reference, state_checksum
from audiomoe.models.lalm import AudioLanguageModel, _hf_config
from audiomoe.models.llm import config_to_dict
from audiomoe.models.processor import AudioLanguageProcessor

LORA_FOLDERS = {"llm": "lora", "encoder": "encoder_lora"}
PEFT_TASK_TYPES = {"llm": "CAUSAL_LM", "encoder": None}
LoraMode = Literal["keep", "merge", "strip"]


def lora_components(model: AudioLanguageModel) -> list[str]:
    """Components of ``model`` that carry LoRA layers (``llm``, ``encoder``)."""
    return [name for name in LORA_FOLDERS if getattr(model.config.lora, name)]


def without_lora(module: nn.Module, merge: bool) -> nn.Module:
    """A copy of ``module`` whose peft LoRA layers are replaced by their base layers, merged first if ``merge``.

    (peft's ``merge_and_unload`` lives on ``LoraModel``; audiomoe injects adapters with
    ``inject_adapter_in_model``, which leaves no such wrapper, so the same two steps are done per layer here.)"""
    from peft.tuners.tuners_utils import BaseTunerLayer

    clean = copy.deepcopy(module)
    for name, layer in list(clean.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            if merge:
                layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(clean.get_submodule(parent) if parent else clean, child, layer.get_base_layer())
    if hasattr(clean, "peft_config"):
        del clean.peft_config
    return clean


def save_peft_adapter(module: nn.Module, folder: Path, task_type: str | None, base: str) -> None:
    """The LoRA of ``module`` (injected by peft, adapter ``default``) as a PEFT adapter folder, loadable with
    ``peft.PeftModel.from_pretrained(base_module, folder)``."""
    from peft import get_peft_model_state_dict

    settings = copy.deepcopy(module.peft_config["default"])
    settings.task_type, settings.base_model_name_or_path, settings.inference_mode = task_type, base, True
    settings.save_pretrained(str(folder))
    # PeftModel wraps the base as ``base_model.model``; its saved keys carry that prefix, without adapter name.
    state = {f"base_model.model.{k}": v.contiguous() for k, v in get_peft_model_state_dict(module).items()}
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def native_config(
    model: AudioLanguageModel,
    sources: dict[str, dict[str, str]] | None = None,
    lora: dict[str, str] | None = None,
) -> AudiomoeConfig:
    """The ``AudiomoeConfig`` of ``model``: the encoder and LLM as transformers config dicts, no paths."""
    encoder_config = _hf_config(model.encoder)
    config = dataclasses.replace(
        model.config,
        encoder=dataclasses.replace(model.config.encoder, config=config_to_dict(encoder_config)),
        llm=dataclasses.replace(model.config.llm, config=config_to_dict(model.llm.config)),
    )
    return AudiomoeConfig.from_lalm_config(
        config,
        audio_token_id=model.audio_token_id,
        sources=sources,
        lora=lora,
        auto_map={**auto_map(), **processor_auto_map()},
        custom_pipelines=custom_pipelines(),
        pad_token_id=model.processor.pad_token_id,
        eos_token_id=model._stop_ids(),
    )


def to_native(
    model: AudioLanguageModel, lora: LoraMode = "keep", config: AudiomoeConfig | None = None
) -> AudiomoeForConditionalGeneration:
    """The native model around ``model``'s components. ``lora``: ``keep`` shares the components as they are
    (LoRA layers included; nothing is copied), ``merge`` / ``strip`` use copies with the LoRA merged / removed."""
    config = config or native_config(model)
    with torch.device("meta"):  # skeleton only: its components are replaced right below
        native = AudiomoeForConditionalGeneration(config)
    components = {name: getattr(model, name) for name in ("encoder", "adapter", "llm")}
    if lora != "keep":
        for name in lora_components(model):
            components[name] = without_lora(components[name], merge=lora == "merge")
    for name, module in components.items():
        setattr(native, name, module)
    native.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_new_tokens=64
    )
    return native.eval()


def save_native(
    model: AudioLanguageModel,
    directory: str | Path,
    include_frozen: bool = True,
    merge_lora: bool = False,
    model_root: str | Path | None = None,
) -> Path:
    """Write ``model`` as a native directory (see the module docstring); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lora_dirs = {} if merge_lora else {name: LORA_FOLDERS[name] for name in lora_components(model)}
    whole = set(model._whole_components())
    sources = {}
    if not include_frozen:
        for name in ("encoder", "llm"):
            if name not in whole:
                reference = portable_reference(getattr(model.config, name).path, model_root, f"{name}.path")
                sources[name] = {"reference": reference, "sha256": ""}
    config = native_config(model, sources=sources, lora=lora_dirs)
    native = to_native(model, "merge" if merge_lora else "strip", config)
    for name in sources:
        sources[name]["sha256"] = state_checksum(getattr(native, name))
    for name, folder in lora_dirs.items():
        base = sources.get(name, {}).get("reference", "")
        save_peft_adapter(getattr(model, name), directory / folder, PEFT_TASK_TYPES[name], base)
    state = {k: v for k, v in native.state_dict().items() if k.split(".", 1)[0] not in sources}
    native.save_pretrained(str(directory), state_dict=state)
    model.processor.save_pretrained(directory)
    write_remote_code(directory)
    return directory


def export_directory(
    source: str | Path,
    output: str | Path,
    include_frozen: bool = True,
    merge_lora: bool = False,
    model_root: str | Path | None = None,
) -> Path:
    """An audiomoe model or run directory -> a native directory (``audiomoe export``)."""
    model = AudioLanguageModel.from_pretrained(resolve_model_dir(source))
    return save_native(model, output, include_frozen, merge_lora, model_root)


def is_native_directory(path: str | Path) -> bool:
    """Whether ``path`` holds a transformers-native audiomoe directory (``config.json`` of ``model_type`` audiomoe)."""
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "audiomoe"


def load_native(
    path: str | Path, model_root: str | Path | None = None
) -> tuple[AudiomoeForConditionalGeneration, AudioLanguageProcessor]:
    """The native model and its processor from a native directory, an audiomoe model directory or a run
    directory (an audiomoe directory is wrapped in memory, LoRA layers kept: nothing is copied)."""
    path = Path(path)
    for candidate in (path, path / MODEL_DIR):
        if is_native_directory(candidate):
            model = AudiomoeForConditionalGeneration.from_pretrained(str(candidate), model_root=model_root)
            return model.eval(), AudiomoeProcessor.from_pretrained(candidate)
    lalm = AudioLanguageModel.from_pretrained(resolve_model_dir(path))
    return to_native(lalm, "keep"), lalm.processor
