"""Text normalisation for error-rate metrics, chosen by language.

- English (``language`` empty or ``en*``): transformers' Whisper ``EnglishTextNormalizer`` with Whisper's
  British -> American spelling map (``whisper_english.json`` beside this module: 1,739 entries, the file
  ``whisper/normalizers/english.json`` of openai/whisper, MIT licence, Copyright (c) 2022 OpenAI, as
  redistributed by the whisper-normalizer 0.1.15 package; transformers ships the normaliser code but not the map,
  which Whisper tokenizers download). "the color is gray" and "The colour is grey." normalise alike.
- Any other language: :func:`basic_normalize`: Unicode NFKC, case folded, punctuation and symbols *removed*
  (not turned into spaces, so "你好，世界。" -> "你好世界"), whitespace collapsed.
- Languages written without spaces (``NO_SPACE_LANGUAGES``): the character error rate also drops whitespace,
  so a segmenter's spaces do not count as characters.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

SPELLING_MAP_FILE = Path(__file__).with_name("whisper_english.json")
# ISO 639-1/3 codes of scripts written without spaces between words.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "cmn", "wuu"})


@lru_cache(maxsize=1)
def whisper_english() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads(SPELLING_MAP_FILE.read_text(encoding="utf-8"))
    return EnglishTextNormalizer(mapping)


def basic_normalize(text: str) -> str:
    """NFKC, case folded, Unicode punctuation (P*) and symbols (S*) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(kept.split())


def base_language(language: str | None) -> str:
    """``"en-US"`` -> ``"en"``, ``"zh_Hans"`` -> ``"zh"``; ``""`` for unknown."""
    return (language or "").replace("_", "-").split("-")[0].lower()


def is_english(language: str | None) -> bool:
    return base_language(language) in ("", "en", "eng")


def normalize_for_error_rate(text: str, language: str | None = None, unit: str = "wer") -> str:
    """The text a WER / CER is computed on, for ``language`` (see the module docstring)."""
    if is_english(language):
        return whisper_english()(text)
    flat = basic_normalize(text)
    if unit == "cer" and base_language(language) in NO_SPACE_LANGUAGES:
        flat = flat.replace(" ", "")
    return flat
