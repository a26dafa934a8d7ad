"""Multiple-choice evaluation in the MMAU / MMAR JSON formats.

Both benchmarks ship a JSON list of items ``{"question", "choices": [...], "answer": "<text of one choice>",
"audio_id" | "audio_path", "task" | "category", ...}``. We prompt with lettered choices and map a free-form answer
back to a choice: an explicit letter wins ("(B)", "B.", "B)", "answer: B", a lone "B"); otherwise the choice whose
text the answer contains (the longest, so "major chord" beats "chord"); otherwise the answer is unparsed (wrong).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiomoe.text import normalize_label

LETTERS = string.ascii_uppercase


@dataclass
class McqItem:
    """One multiple-choice question. ``answer_index`` indexes ``choices``."""

    question: str
    choices: list[str]
    answer_index: int
    audio: str = ""
    category: str = ""
    id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def prompt(self) -> str:
        lines = [self.question.strip()]
        lines += [f"({LETTERS[i]}) {choice}" for i, choice in enumerate(self.choices)]
        lines.append("Answer with the letter of the correct choice.")
        return "\n".join(lines)


_LETTER_PATTERNS = [
    re.compile(r"\(([A-Z])\)", re.IGNORECASE),  # (B)
    re.compile(r"\banswer(?: is)?\s*[:\-]?\s*\(?([A-Z])\b", re.IGNORECASE),  # answer: B / the answer is b
    re.compile(r"^\s*([A-Z])\s*[\.\):]"),  # B. / B) / B:
    re.compile(r"^\s*([A-Z])\s*$", re.IGNORECASE),  # B
]


def extract_letter(prediction: str, n_choices: int) -> int | None:
    """Index of the explicitly named choice letter, or None."""
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(prediction)
        if match:
            index = LETTERS.index(match.group(1).upper())
            if index < n_choices:
                return index
    return None


def choose(prediction: str, choices: list[str]) -> int | None:
    """Map a model's answer to a choice index (letter first, then contained choice text), or None."""
    index = extract_letter(prediction, len(choices))
    if index is not None:
        return index
    text = f" {normalize_label(prediction)} "
    contained = [
        (len(c), i) for i, c in enumerate(normalize_label(c) for c in choices) if c and f" {c} " in text
    ]
    return max(contained)[1] if contained else None


def _checked_item(raw: Any, where: str) -> tuple[list[str], str]:
    """The choices and answer of one item, after the schema checks (``where`` names the file and item)."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: expected an object {{question, choices, answer}}, got {type(raw).__name__}"
        )
    for key in ("question", "choices", "answer"):
        if key not in raw:
            raise ValueError(f"{where}: missing key {key!r} (MMAU/MMAR items need question, choices, answer)")
    if not isinstance(raw["question"], str) or not raw["question"].strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    choices = raw["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
        raise ValueError(f"{where}: 'choices' must be a list of strings, got {choices!r}")
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{where}: {len(choices)} choices; an item needs 2 to {len(LETTERS)} (letters A-Z)")
    if not isinstance(raw["answer"], (str, int, float)) or isinstance(raw["answer"], bool):
        raise ValueError(
            f"{where}: 'answer' must be the text (or letter) of one choice, got {raw['answer']!r}"
        )
    return [str(c) for c in choices], str(raw["answer"])


def load_mcq_json(path: str | Path) -> list[McqItem]:
    """Read an MMAU- or MMAR-format JSON file (a list of items); audio paths resolve relative to the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 (byte {err.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions (MMAU / MMAR format)")
    if not data:
        raise ValueError(f"{path}: the list of questions is empty")
    items = []
    for n, raw in enumerate(data):
        where = f"{path}: item {n}"
        choices, answer = _checked_item(raw, where)
        if answer in choices:
            answer_index = choices.index(answer)
        elif len(answer) == 1 and answer.upper() in LETTERS[: len(choices)]:
            answer_index = LETTERS.index(answer.upper())
        else:
            raise ValueError(f"{where}: answer {answer!r} is not one of the choices {choices}")
        audio = str(raw.get("audio_path") or raw.get("audio_id") or raw.get("audio") or "")
        if audio and not Path(audio).is_absolute():
            audio = str((path.parent / audio).resolve())
        items.append(
            McqItem(
                question=str(raw["question"]),
                choices=choices,
                answer_index=answer_index,
                audio=audio,
                category=str(raw.get("category") or raw.get("task") or ""),
                id=str(raw.get("id", n)),
                extra={k: v for k, v in raw.items() if k not in ("question", "choices", "answer")},
            )
        )
    return items
