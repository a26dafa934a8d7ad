"""Answer-text normalisation, the one place for it (bottom layer: imports nothing from audiomoe).

Tasks normalise answers and instructions with :func:`normalize_text`, metrics and multiple-choice parsing compare
labels with :func:`normalize_label`; both drop punctuation but apostrophes and collapse whitespace.
"""

from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w\s']")


def normalize_label(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes and underscores kept), whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def normalize_text(text: str) -> str:
    """:func:`normalize_label` with underscores read as spaces (``dog_bark`` -> ``dog bark``). Used for WER."""
    return normalize_label(text.replace("_", " "))
