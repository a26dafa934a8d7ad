"""audiomoe.models: encoders (a registry), LLMs and the assembled AudioLanguageModel.

Importing this package registers the encoders (``whisper``, ``ssl``/``wav2vec2``/``hubert``/``wavlm``).
"""

from audiomoe.models import ssl, whisper  # noqa: F401  (register encoders)
from audiomoe.models.base import ENCODERS, AudioEncoder, EncoderConfig, build_encoder, register_encoder

__all__ = ["ENCODERS", "AudioEncoder", "EncoderConfig", "build_encoder", "register_encoder"]
