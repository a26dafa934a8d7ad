"""``AudiomoeForConditionalGeneration``: the LALM as a transformers ``PreTrainedModel`` + ``GenerationMixin``.

The same three components under the same names as :class:`~audiomoe.models.lalm.AudioLanguageModel`
(``encoder.…``, ``adapter.…``, ``llm.…``), built by the same function, and the same audio path: the methods that
encode, adapt and write the audio rows into the placeholder embeddings are ``AudioLanguageModel``'s own (bound
here as class attributes, not copied). ``forward`` adds what ``GenerationMixin`` needs (cache, position ids), so
``generate`` takes any ``GenerationConfig``: greedy, sampling, beam search::

    input_ids (B, L), attention_mask (B, L), audio_features (N, n_mels, T), audio_lengths (N,)
        -> logits (B, L, V)            [audio inputs are read on the first (prefill) step only]

Beam search repeats each sample's inputs ``num_beams`` times, audio included; that keeps clips and placeholders
aligned when every sample holds one clip (what ``audiomoe infer`` builds).

Loading a directory whose config names PEFT adapter folders (``config.lora``) puts each onto its component with
peft (``peft`` must then be installed; a merged export needs only torch + transformers).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from audiomoe.models.hf.configuration_audiomoe import AudiomoeConfig
from audiomoe.models.hf.sources import load_sources
from audiomoe.models.lalm import AudioLanguageModel, _position_ids, build_components


class AudiomoeForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = AudiomoeConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_attention_backend = True

    # The audio path, shared with AudioLanguageModel (one implementation).
    audio_token_lengths = AudioLanguageModel.audio_token_lengths
    encode_audio = AudioLanguageModel.encode_audio
    embed_audio = AudioLanguageModel.embed_audio
    _input_embeds = AudioLanguageModel._input_embeds

    def __init__(self, config: AudiomoeConfig) -> None:
        super().__init__(config)
        lalm_config = config.to_lalm_config()
        with (
            torch.random.fork_rng()
        ):  # seeded random init, as AudioLanguageModel; the checkpoint overwrites it
            torch.manual_seed(lalm_config.seed)
            self.encoder, self.adapter, self.llm = build_components(lalm_config)
        self.audio_token_id = config.audio_token_id
        # A compact directory stores no weights for referenced components: they come from their sources.
        self._keys_to_ignore_on_load_missing = [rf"^{component}\." for component in config.sources]
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.llm.get_output_embeddings()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Components initialise themselves when built; the checkpoint then overwrites every weight."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Shapes in the module docstring; ``labels`` ``(B, L)`` with -100 where no loss falls. The loss is
        ``AudioLanguageModel``'s: LM loss + ``aux_loss_weight`` * the adapter's auxiliary loss."""
        adapter_out = None
        if inputs_embeds is None:
            inputs_embeds, adapter_out = self._input_embeds(
                input_ids, audio_features, audio_lengths, None, None
            )
        if position_ids is None and cache is None and attention_mask is not None:
            position_ids = _position_ids(attention_mask)  # as AudioLanguageModel.forward: real tokens only
        # (generate passes position ids, and drops an all-ones attention mask: the LLM then masks causally)
        out = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )
        loss = out.loss
        if loss is not None and adapter_out is not None:
            loss = loss + self.config.audiomoe.get("aux_loss_weight", 1.0) * adapter_out.aux_loss
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, cache=out.cache)

    def prepare_inputs_for_generation(
        self, *args: Any, is_first_iteration: bool = False, **kwargs: Any
    ) -> dict:
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get(
            "use_cache", True
        ):  # the audio is in the cache after prefill
            inputs.pop("audio_features", None)
            inputs.pop("audio_lengths", None)
        return inputs

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> AudiomoeForConditionalGeneration:
        """As ``PreTrainedModel.from_pretrained``; then each component in ``config.sources`` is loaded from its
        reference (``model_root=`` or ``AUDIOMOE_MODEL_ROOT`` resolves ``root:`` ones) and its checksum checked,
        and the PEFT adapter folders named in ``config.lora`` are put onto their components (needs peft)."""
        model_root = kwargs.pop("model_root", None)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.config.sources:
            load_sources(model, model.config.to_lalm_config(), model.config.sources, model_root)
        for component, folder in model.config.lora.items():
            _load_peft_adapter(model, component, os.path.join(str(pretrained_model_name_or_path), folder))
        return model


def _load_peft_adapter(model: AudiomoeForConditionalGeneration, component: str, folder: str) -> None:
    """Put the PEFT adapter in ``folder`` onto ``model.<component>`` in place (peft, adapter name ``default``)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError(
            f"{folder} is a LoRA adapter: install peft, or export with `audiomoe export --merge-lora`"
        ) from None
    peft_model = PeftModel.from_pretrained(getattr(model, component), folder, is_trainable=False)
    setattr(model, component, peft_model.base_model.model)
