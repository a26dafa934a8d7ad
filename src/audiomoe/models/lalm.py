"""The large audio language model: audio encoder -> adapter (any registered one) -> causal LLM.

Data flow for a batch (``N`` clips flattened over the batch in the order of their ``<audio>`` tags)::

    audio_features (N, n_mels, T), audio_lengths (N,)
        -> encoder -> encoder_hidden (N, T_enc, C), encoder_mask (N, T_enc)      [skipped if given precomputed]
        -> adapter -> embeds (N, T', D), mask (N, T')                             [T' = adapter.output_lengths]
        -> the valid rows, in clip order, overwrite the placeholder positions of the LLM input embeddings
    input_ids (B, L) -> LLM(inputs_embeds (B, L, D)) -> logits (B, L, V); loss = LM loss on labels != -100
                                                       + aux_loss_weight * adapter aux loss

With labels, the LLM projects to the vocabulary only the S positions whose next token is supervised (its
``logits_to_keep`` as a boolean mask), so ``logits`` are ``(S, V)`` there: the audio and prompt positions, most
of an LALM batch, never meet the LM head, nor the cross-entropy's ``(B, L, V)`` float32 logits.

The processor (:mod:`audiomoe.models.processor`) makes batches whose placeholder count per clip equals
:meth:`AudioLanguageModel.audio_token_lengths`, so the overwrite is a single ``masked_scatter``.

A model directory (``save_pretrained``) holds ``lalm_config.yaml`` (the resolved :class:`LALMConfig`),
``checkpoint.json`` (which components are stored whole, and their transformers configs), the processor files and
``model.safetensors`` with the adapter, every trainable parameter (LoRA, regex-unfrozen ones) and the whole
encoder/LLM only where it was trained or built from a config; a component loaded from ``path`` is referenced by
that path. Loading never unpickles.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PretrainedConfig

from audiomoe.adapters import AdapterOutput, build_adapter
from audiomoe.config import ConfigError, from_dict, load_config, save_yaml
from audiomoe.models.base import EncoderConfig, build_encoder
from audiomoe.models.directory import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_DIR,
    WEIGHTS_FILE,
    audio_token_lengths_from_dir,
    read_manifest,
    resolve_model_dir,
)
from audiomoe.models.freeze import COMPONENTS, FreezeConfig, LoraSettings, apply_freeze, inject_lora
from audiomoe.models.llm import LLMConfig, build_llm, config_to_dict, tokenizer_source
from audiomoe.models.processor import AudioLanguageProcessor, ProcessorConfig
from audiomoe.models.tokenizer import load_tokenizer

__all__ = [
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "MODEL_DIR",
    "WEIGHTS_FILE",
    "AudioLanguageModel",
    "LALMConfig",
    "LALMOutput",
    "audio_token_lengths_from_dir",
    "resolve_model_dir",
]


@dataclass
class LALMConfig:
    """Everything needed to build an :class:`AudioLanguageModel`.

    ``adapter`` is an adapter config dict with ``type`` (see :mod:`audiomoe.adapters`); ``input_dim`` and
    ``output_dim`` default to the encoder and LLM hidden sizes. ``aux_loss_weight`` scales the adapter's own
    (already weighted) auxiliary loss in the total. ``seed`` fixes random-init weights.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: dict[str, Any] = field(default_factory=lambda: {"type": "linear"})
    llm: LLMConfig = field(default_factory=LLMConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    aux_loss_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if "type" not in self.adapter:
            raise ConfigError("adapter: needs a type (e.g. linear, mlp, conv, qformer, moe)")


@functools.cache
def _keeps_logits_by_mask(llm_class: type) -> bool:
    """Whether this transformers causal LM's forward takes ``logits_to_keep`` (v5: an int, positions, or a
    boolean ``(B, L)`` mask that flattens the logits to ``(S, V)``)."""
    return "logits_to_keep" in inspect.signature(llm_class.forward).parameters


@dataclass
class LALMOutput:
    """``loss`` = ``lm_loss`` + aux_loss_weight * ``aux_loss`` (None without labels); ``logits`` ``(B, L, V)``, or
    ``(S, V)`` at the S supervised positions when the loss came from them (``forward(labels=...)``, see
    :meth:`AudioLanguageModel.forward`); ``adapter_output`` holds the routing tensors for analysis (None for a
    text-only batch)."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    aux_loss: torch.Tensor
    logits: torch.Tensor
    adapter_output: AdapterOutput | None


def _hf_config(module: nn.Module) -> PretrainedConfig | None:
    """The transformers config of the first submodule that has one (how a built-from-config copy is rebuilt)."""
    for sub in module.modules():
        if isinstance(getattr(sub, "config", None), PretrainedConfig):
            return sub.config
    return None


def build_components(config: LALMConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Encoder, adapter and LLM of ``config`` (no LoRA, no freezing); fills the adapter's ``input_dim`` /
    ``output_dim`` in ``config.adapter``. Shared with the transformers-native class (:mod:`audiomoe.models.hf`)."""
    encoder = build_encoder(config.encoder)
    llm = build_llm(config.llm)
    llm_hidden = llm.config.get_text_config().hidden_size
    for key, size in (("input_dim", encoder.hidden_size), ("output_dim", llm_hidden)):
        if config.adapter.setdefault(key, size) != size:
            raise ConfigError(f"adapter.{key} = {config.adapter[key]} but the model needs {size}")
    return encoder, build_adapter(config.adapter).train(False), llm


class AudioLanguageModel(nn.Module):
    """Encoder + adapter + LLM; see the module docstring. Build from a :class:`LALMConfig` (or a dict)."""

    def __init__(
        self, config: LALMConfig | dict[str, Any], processor: AudioLanguageProcessor | None = None
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = from_dict(LALMConfig, config)
        config = dataclasses.replace(config, adapter=dict(config.adapter))
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.encoder, self.adapter, self.llm = build_components(config)
            if config.lora.llm:
                inject_lora(self.llm, config.lora, config.lora.llm_target_modules, "llm")
            if config.lora.encoder:
                inject_lora(self.encoder, config.lora, config.lora.encoder_target_modules, "encoder")
        apply_freeze(self, config.freeze)
        self.config = config
        if processor is None:
            tokenizer = load_tokenizer(tokenizer_source(config.llm))
            processor = AudioLanguageProcessor(
                tokenizer, self.encoder.feature_extractor, self.audio_token_lengths, config.processor
            )
        # The model owns the length function: the processor's placeholder counts always match this model.
        processor.audio_token_lengths = self.audio_token_lengths
        self.processor = processor
        self.audio_token_id = processor.audio_token_id
        self.eval()

    def train(self, mode: bool = True) -> AudioLanguageModel:
        """As ``nn.Module.train``, but a component with no trainable parameter stays in eval mode: a frozen
        encoder then gives exactly what a precomputed feature cache holds (no dropout / layer drop)."""
        super().train(mode)
        for name in ("encoder", "llm"):
            component = getattr(self, name)
            if not any(p.requires_grad for p in component.parameters()):
                component.eval()
        return self

    # -- forward ------------------------------------------------------------------------------------------------

    def audio_token_lengths(self, audio_lengths: torch.Tensor) -> torch.Tensor:
        """Placeholder tokens per clip for ``audio_lengths`` valid input frames ``(N,)`` -> ``(N,)``."""
        return self.adapter.output_lengths(self.encoder.output_lengths(audio_lengths))

    def encode_audio(
        self, audio_features: torch.Tensor, audio_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder only: features ``(N, n_mels, T)`` -> hidden ``(N, T_enc, C)``, mask ``(N, T_enc)``.

        Runs without autograd when no encoder parameter trains (what a frozen-encoder feature cache stores)."""
        trains = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            return self.encoder(audio_features, audio_lengths.to(audio_features.device))

    def embed_audio(self, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor) -> AdapterOutput:
        """Adapter: ``(N, T_enc, C)`` + mask -> :class:`AdapterOutput` with embeds ``(N, T', D)``."""
        param = next(self.adapter.parameters(), None)
        if param is not None:
            encoder_hidden = encoder_hidden.to(param.dtype)
        return self.adapter(encoder_hidden, encoder_mask.bool())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        encoder_hidden: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        supervised_logits_only: bool = True,
    ) -> LALMOutput:
        """Shapes in the module docstring. Give either ``audio_features`` + ``audio_lengths`` or precomputed
        ``encoder_hidden`` + ``encoder_mask`` (the same result, without running the encoder). With ``labels`` the
        logits are ``(S, V)`` at the supervised positions only, where the LLM takes a boolean ``logits_to_keep``
        (transformers v5 causal LMs); ``supervised_logits_only=False`` (or an LLM without it) keeps all ``(B, L, V)``.
        """
        embeds, adapter_out = self._input_embeds(
            input_ids, audio_features, audio_lengths, encoder_hidden, encoder_mask
        )
        out, lm_loss = self.language_model_loss(embeds, attention_mask, labels, supervised_logits_only)
        aux = adapter_out.aux_loss if adapter_out is not None else embeds.new_zeros((), dtype=torch.float32)
        loss = None if lm_loss is None else lm_loss + self.config.aux_loss_weight * aux
        return LALMOutput(
            loss=loss, lm_loss=lm_loss, aux_loss=aux, logits=out.logits, adapter_output=adapter_out
        )

    def language_model_loss(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        supervised_logits_only: bool = True,
    ) -> tuple[Any, torch.Tensor | None]:
        """The LLM over input embeddings ``(B, L, D)``: its output (logits ``(S, V)`` or ``(B, L, V)``, see
        :meth:`forward`) and the LM loss (None without labels)."""
        common = {
            "inputs_embeds": embeds,
            "attention_mask": attention_mask,
            "position_ids": _position_ids(attention_mask),
            "use_cache": False,
        }
        if labels is not None and supervised_logits_only and _keeps_logits_by_mask(type(self.llm)):
            # transformers' causal-LM loss, on the supervised positions only: logits at position t predict
            # labels[t + 1]; the mean over the same targets as ignore_index=-100 over all positions
            next_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]
            supervised = next_labels != -100
            out = self.llm(**common, logits_to_keep=supervised)
            return out, F.cross_entropy(out.logits.float(), next_labels[supervised].to(out.logits.device))
        out = self.llm(**common, labels=labels)
        return out, out.loss

    def _input_embeds(
        self,
        input_ids: torch.Tensor,
        audio_features: torch.Tensor | None,
        audio_lengths: torch.Tensor | None,
        encoder_hidden: torch.Tensor | None,
        encoder_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, AdapterOutput | None]:
        """LLM input embeddings ``(B, L, D)`` with the audio tokens written at the placeholder positions."""
        is_audio = input_ids == self.audio_token_id
        # The placeholder id may lie past the embedding table (it is never looked up): embed a valid id there.
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_audio, 0))
        n_placeholders = int(is_audio.sum())
        if encoder_hidden is None and audio_features is not None:
            if audio_lengths is None:
                raise ValueError("audio_features need audio_lengths (N,) valid frames per clip")
            encoder_hidden, encoder_mask = self.encode_audio(audio_features, audio_lengths)
        if encoder_hidden is None:
            if n_placeholders:
                raise ValueError(
                    f"the batch holds {n_placeholders} audio placeholder tokens but no audio was given"
                )
            return embeds, None
        if encoder_mask is None:
            raise ValueError("encoder_hidden needs encoder_mask (N, T_enc)")
        adapter_out = self.embed_audio(encoder_hidden.to(embeds.device), encoder_mask.to(embeds.device))
        audio = adapter_out.embeds[adapter_out.mask]  # (sum of valid tokens, D), clip order
        if audio.shape[0] != n_placeholders:
            per_clip = adapter_out.mask.sum(-1).tolist()
            raise ValueError(
                f"the batch holds {n_placeholders} audio placeholder tokens but the {len(per_clip)} clip(s) give "
                f"{audio.shape[0]} adapter tokens ({per_clip} per clip); build batches with model.processor, which "
                "expands each <audio> tag to audio_token_lengths(audio_lengths) placeholders"
            )
        embeds = embeds.masked_scatter(is_audio.unsqueeze(-1), audio.to(embeds.dtype))
        return embeds, adapter_out

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        encoder_hidden: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        labels: torch.Tensor | None = None,  # accepted so that model.generate(**batch) works; unused
        streamer: Any = None,
        stopping_criteria: Any = None,
    ) -> list[str]:
        """Batched greedy or sampled decoding with the LLM's KV cache; returns one answer string per sample.

        ``streamer`` (a transformers ``BaseStreamer``) gets each step's new tokens ``(B,)`` as they are chosen, and
        ``stopping_criteria`` (a ``StoppingCriteriaList``) may end rows early: both go to the LLM's ``generate``
        unchanged (what ``audiomoe serve`` streams and limits requests with)."""
        new_tokens, _ = self.generate_ids(
            max_new_tokens, do_sample, temperature, top_p, streamer=streamer, stopping_criteria=stopping_criteria,
            input_ids=input_ids, attention_mask=attention_mask, audio_features=audio_features,
            audio_lengths=audio_lengths, encoder_hidden=encoder_hidden, encoder_mask=encoder_mask,
        )  # fmt: skip
        return self.processor.decode(new_tokens)

    @torch.no_grad()
    def generate_ids(
        self, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
        streamer: Any = None, stopping_criteria: Any = None, **inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """As :meth:`generate`, but the new token ids ``(B, T)`` and their validity mask ``(B, T)`` (True up to
        and including the first stop token; what on-policy objectives teacher-force). ``inputs``: the prompt
        tensors :meth:`generate` takes (``input_ids``, ``attention_mask``, audio or encoder tensors)."""
        attention_mask = inputs["attention_mask"]
        embeds, _ = self._input_embeds(
            inputs["input_ids"], *(inputs.get(k) for k in ("audio_features", "audio_lengths", "encoder_hidden",
                                                            "encoder_mask"))
        )  # fmt: skip
        # Decoding appends on the right, so every prompt must end at the last column: move padding to the left.
        order = torch.argsort(attention_mask, dim=1, stable=True)
        embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand_as(embeds))
        attention_mask = torch.gather(attention_mask, 1, order)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        stops = self._stop_ids()
        new_tokens = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=stops,
            pad_token_id=self.processor.pad_token_id,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
            **sampling,
        )
        is_stop = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device))
        valid = (is_stop.long().cumsum(-1) - is_stop.long()) == 0
        return new_tokens, valid

    def _stop_ids(self) -> list[int]:
        tokenizer = self.processor.tokenizer
        ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        configured = self.llm.generation_config.eos_token_id
        ids |= set(configured if isinstance(configured, list) else [configured])
        unk = tokenizer.unk_token_id
        return sorted(i for i in ids if isinstance(i, int) and i != unk)

    # -- parameters ---------------------------------------------------------------------------------------------

    def param_summary(self) -> dict[str, dict[str, int]]:
        """Per component: ``total`` and ``trainable`` parameters; the adapter also ``active`` (per token)."""
        summary: dict[str, dict[str, int]] = {}
        for name in COMPONENTS:
            params = list(getattr(self, name).parameters())
            summary[name] = {
                "total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
            }
        summary["adapter"]["active"] = self.adapter.param_counts().active
        summary["all"] = {k: sum(summary[c][k] for c in COMPONENTS) for k in ("total", "trainable")}
        return summary

    def format_param_summary(self) -> str:
        """The summary as a small table (what ``audiomoe init`` prints)."""
        rows = [f"{'component':<10} {'total':>15} {'trainable':>15}"]
        for name, counts in self.param_summary().items():
            extra = f"   active/token {counts['active']:,}" if "active" in counts else ""
            rows.append(f"{name:<10} {counts['total']:>15,} {counts['trainable']:>15,}{extra}")
        return "\n".join(rows)

    # -- save / load --------------------------------------------------------------------------------------------

    def _whole_components(self) -> list[str]:
        """Components stored whole: the adapter always; encoder/LLM when built from a config or trained whole."""
        whole = ["adapter"]
        for name in ("encoder", "llm"):
            if not getattr(self.config, name).path or not getattr(self.config.freeze, name):
                whole.append(name)
        return whole

    def _saved_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (tied weights once, under their first name)."""
        whole = tuple(f"{c}." for c in self._whole_components())
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        state, seen = {}, set()
        for name, tensor in self.state_dict().items():
            if not (name.startswith(whole) or name in trainable):
                continue
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key in seen:
                continue
            seen.add(key)
            state[name] = tensor.detach().contiguous()
        return state

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model directory described in the module docstring."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_yaml(self.config, directory / CONFIG_FILE)
        encoder_config = _hf_config(self.encoder)
        manifest = {
            "format": "audiomoe-lalm",
            "format_version": FORMAT_VERSION,
            "whole": self._whole_components(),
            "encoder_config": config_to_dict(encoder_config) if encoder_config is not None else None,
            "llm_config": config_to_dict(self.llm.config),
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        self.processor.save_pretrained(directory)
        save_file(self._saved_state(), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AudioLanguageModel:
        """Load a directory written by :meth:`save_pretrained` (safetensors only; nothing is unpickled)."""
        directory = Path(directory)
        config, manifest = _read_checkpoint(directory)
        processor = AudioLanguageProcessor.from_pretrained(directory, audio_token_lengths=_unbound_lengths)
        model = cls(config, processor=processor)
        try:
            tensors = load_file(str(directory / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error types for a truncated or garbled file
            raise ValueError(
                f"{directory / WEIGHTS_FILE} is damaged ({type(err).__name__}: {err}); copy or save the model again"
            ) from None
        bad = [
            name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} holds NaN/inf weights ({bad[0]}"
                f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); the training diverged: retrain it"
            )
        expected = set(model._saved_state())
        if set(tensors) != expected:
            unexpected, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
            raise ValueError(
                f"{directory / WEIGHTS_FILE} does not fit {directory / CONFIG_FILE}: unexpected {unexpected[:5]}, "
                f"missing {missing[:5]}; was the config edited after saving?"
            )
        model.load_state_dict(tensors, strict=False)
        return model


def _unbound_lengths(lengths: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("processor used before its model bound audio_token_lengths")


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left- and right-padded rows see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _read_checkpoint(directory: Path) -> tuple[LALMConfig, dict[str, Any]]:
    """The saved config, with components stored whole switched to build-from-config (their path is not needed)."""
    manifest = read_manifest(directory)
    config = load_config(LALMConfig, directory / CONFIG_FILE)
    whole = set(manifest["whole"])
    if "encoder" in whole and manifest.get("encoder_config"):
        config.encoder = dataclasses.replace(config.encoder, path="", config=manifest["encoder_config"])
    if "llm" in whole:
        config.llm = dataclasses.replace(config.llm, path="", config=manifest["llm_config"])
    return config, manifest
