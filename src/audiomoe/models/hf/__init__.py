"""audiomoe's LALM as a transformers-native model (``model_type: "audiomoe"``).

- :mod:`.configuration_audiomoe` ``AudiomoeConfig``, :mod:`.modeling_audiomoe`
  ``AudiomoeForConditionalGeneration`` (``PreTrainedModel`` + ``GenerationMixin``), :mod:`.processing_audiomoe`
  ``AudiomoeProcessor``: the classes ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` /
  ``AutoProcessor`` return, here (registered by :func:`register_auto_classes`) and, as remote code, without
  audiomoe installed;
- :mod:`.bundle`: those remote-code files, generated from audiomoe's own modules at save time;
- :mod:`.sources`: portable references + checksums of components a compact directory does not store;
- :mod:`.export`: ``AudioLanguageModel`` (or a saved directory) -> a native directory, LoRA as PEFT folders or
  merged (``audiomoe export``).
"""

from __future__ import annotations


def register_auto_classes() -> None:
    """Make the auto classes know ``model_type: "audiomoe"`` in this process (no ``trust_remote_code`` needed)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

    from audiomoe.models.hf.configuration_audiomoe import AudiomoeConfig
    from audiomoe.models.hf.modeling_audiomoe import AudiomoeForConditionalGeneration
    from audiomoe.models.hf.processing_audiomoe import AudiomoeProcessor

    AutoConfig.register("audiomoe", AudiomoeConfig, exist_ok=True)
    AutoModel.register(AudiomoeConfig, AudiomoeForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(AudiomoeConfig, AudiomoeForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(AudiomoeConfig, AudiomoeProcessor, exist_ok=True)
