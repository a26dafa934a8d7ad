"""``AudiomoePipeline``: ``transformers.pipeline(model=DIR, trust_remote_code=True)`` on a native directory.

``config.json`` names this class under ``custom_pipelines`` (the only one, so ``pipeline`` picks it without a
task). One call answers one clip::

    pipe = pipeline(model="exported/tiny", trust_remote_code=True)
    pipe({"audio": waveform_16khz, "prompt": "What do you hear?"}, max_new_tokens=32, num_beams=4)  # -> str
    pipe(waveform_16khz)                                                  # the default prompt

Keyword arguments other than ``prompt`` go to ``generate`` (or pass ``generation_config=``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import Pipeline

from audiomoe.models.hf.processing_audiomoe import AudiomoeProcessor

DEFAULT_PROMPT = "What do you hear?"


class AudiomoePipeline(Pipeline):
    # The audio-language processor is ours; transformers should not try to build one from the directory.
    _load_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.audio_processor = AudiomoeProcessor.from_pretrained(model.name_or_path)

    def _sanitize_parameters(
        self, prompt: str | None = None, **generate_kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return ({"prompt": prompt} if prompt is not None else {}), generate_kwargs, {}

    def preprocess(self, inputs: Any, prompt: str = DEFAULT_PROMPT) -> dict[str, Any]:
        """``inputs``: a 16 kHz mono waveform, or ``{"audio": waveform, "prompt": str}``."""
        if isinstance(inputs, dict):
            prompt, inputs = inputs.get("prompt", prompt), inputs["audio"]
        return self.audio_processor([prompt], [[np.asarray(inputs, dtype=np.float32)]])

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        ids = self.model.generate(**model_inputs, **generate_kwargs)
        return {"new_tokens": ids[:, model_inputs["input_ids"].shape[1] :]}

    def postprocess(self, model_outputs: dict[str, Any]) -> str:
        return self.audio_processor.decode(model_outputs["new_tokens"])[0]
