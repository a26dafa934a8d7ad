"""Metric registry: a task names its metric, evaluation looks it up here.

    score = compute_metric("wer", predictions, references)   # -> {"wer": 0.12, "n": 40}

- ``wer`` / ``cer``: jiwer on Whisper-style normalised text (transformers' ``EnglishTextNormalizer``: lower case,
  punctuation and fillers removed, numbers and spellings standardised), as Whisper papers report it.
- ``accuracy`` / ``macro_f1``: label tasks; strings are compared after the task's answer normalisation
  (``normalize``), defaulting to :func:`normalize_label`.
- ``mcq_accuracy``: multiple choice (MMAU / MMAR style): a prediction is mapped to a choice by an explicit letter
  ("(B)", "B.", "answer: b") or by the choice text it contains; see :mod:`audiomoe.evaluation.mcq`.

New metrics are registry entries: ``@register_metric("bleu")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import jiwer

from audiomoe.text import normalize_label

Normalize = Callable[[str], str]
MetricFn = Callable[..., dict[str, float]]
METRICS: dict[str, MetricFn] = {}
HIGHER_IS_BETTER: dict[str, bool] = {}


def register_metric(name: str, higher_is_better: bool = True) -> Callable[[MetricFn], MetricFn]:
    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = fn
        HIGHER_IS_BETTER[name] = higher_is_better
        return fn

    return deco


def compute_metric(
    name: str, predictions: Sequence[str], references: Sequence[Any], **kwargs: Any
) -> dict[str, float]:
    """Score ``predictions`` against ``references`` with the registered metric ``name``."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r} is unknown; choose one of {sorted(METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return METRICS[name](predictions, references, **kwargs)


@lru_cache(maxsize=1)
def whisper_normalizer() -> Normalize:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    # The British->American spelling map ships with Whisper tokenizers; without it the rest still applies.
    return EnglishTextNormalizer({})


def _error_rate(predictions: Sequence[str], references: Sequence[str], unit: str) -> dict[str, float]:
    norm = whisper_normalizer()
    pairs = [(norm(p), norm(r)) for p, r in zip(predictions, references)]
    # jiwer cannot score an empty reference; Whisper's evaluations drop them too (counted, not hidden).
    kept = [(p, r) for p, r in pairs if r.strip()]
    if not kept:
        return {unit: float("nan"), "n": 0, "empty_references": len(pairs)}
    hyps, refs = [p for p, _ in kept], [r for _, r in kept]
    value = jiwer.wer(refs, hyps) if unit == "wer" else jiwer.cer(refs, hyps)
    return {unit: float(value), "n": len(kept), "empty_references": len(pairs) - len(kept)}


def error_counts(
    predictions: Sequence[str], references: Sequence[str], unit: str = "wer"
) -> list[tuple[int, int]]:
    """Per-item ``(errors, reference length)`` in words (``unit="wer"``) or characters (``"cer"``), after the
    same Whisper normalisation as :func:`word_error_rate`.

    Why: the corpus WER is total edits / total reference words, so these pairs are its sufficient statistics: a
    bootstrap over items can recompute the corpus WER of any resample from them, and
    ``sum(errors) / sum(words)`` equals ``compute_metric("wer", ...)`` exactly (same integers, same division).
    Items whose normalised reference is empty are dropped by the corpus metric; they count ``(0, 0)`` here.
    Returns one pair per input pair, in order.
    """
    if unit not in ("wer", "cer"):
        raise ValueError(f"unit {unit!r} is not 'wer' or 'cer'")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    norm = whisper_normalizer()
    pairs = [(norm(p), norm(r)) for p, r in zip(predictions, references)]
    kept = [i for i, (_, r) in enumerate(pairs) if r.strip()]
    counts = [(0, 0)] * len(pairs)
    if not kept:
        return counts
    refs, hyps = [pairs[i][1] for i in kept], [pairs[i][0] for i in kept]
    out = jiwer.process_words(refs, hyps) if unit == "wer" else jiwer.process_characters(refs, hyps)
    for i, ref, chunks in zip(kept, out.references, out.alignments):
        edits = 0  # substitutions + deletions (reference spans) + insertions (hypothesis spans)
        for c in chunks:
            if c.type == "insert":
                edits += c.hyp_end_idx - c.hyp_start_idx
            elif c.type != "equal":
                edits += c.ref_end_idx - c.ref_start_idx
        counts[i] = (edits, len(ref))
    return counts


@register_metric("wer", higher_is_better=False)
def word_error_rate(predictions: Sequence[str], references: Sequence[str], **_: Any) -> dict[str, float]:
    """Corpus WER (total edits / total reference words) after Whisper normalisation."""
    return _error_rate(predictions, references, "wer")


@register_metric("cer", higher_is_better=False)
def char_error_rate(predictions: Sequence[str], references: Sequence[str], **_: Any) -> dict[str, float]:
    return _error_rate(predictions, references, "cer")


@register_metric("accuracy")
def accuracy(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None, **_: Any
) -> dict[str, float]:
    """Exact match after answer normalisation."""
    norm = normalize or normalize_label
    hits = sum(norm(p) == norm(r) for p, r in zip(predictions, references))
    return {"accuracy": hits / len(references) if references else float("nan"), "n": len(references)}


@register_metric("macro_f1")
def macro_f1(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None, **_: Any
) -> dict[str, float]:
    """Unweighted mean of per-class F1 over the classes present in the references (predictions of labels that
    never occur as references count as false positives of nothing, i.e. only lower recall)."""
    norm = normalize or normalize_label
    preds, refs = [norm(p) for p in predictions], [norm(r) for r in references]
    classes = sorted(set(refs))
    if not classes:
        return {"macro_f1": float("nan"), "accuracy": float("nan"), "n": 0}
    f1s = []
    for label in classes:
        tp = sum(p == label and r == label for p, r in zip(preds, refs))
        fp = sum(p == label and r != label for p, r in zip(preds, refs))
        fn = sum(p != label and r == label for p, r in zip(preds, refs))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
    return {"macro_f1": sum(f1s) / len(f1s), "accuracy": acc, "n": len(refs)}


@register_metric("mcq_accuracy")
def mcq_accuracy(predictions: Sequence[str], references: Sequence[Any], **_: Any) -> dict[str, float]:
    """``references`` are :class:`~audiomoe.evaluation.mcq.McqItem` (choices + answer)."""
    from audiomoe.evaluation.mcq import choose

    chosen = [choose(p, item.choices) for p, item in zip(predictions, references)]
    hits = sum(c is not None and c == item.answer_index for c, item in zip(chosen, references))
    unparsed = sum(c is None for c in chosen)
    n = len(references)
    return {"mcq_accuracy": hits / n if n else float("nan"), "n": n, "unparsed": unparsed}


def primary_value(name: str, scores: dict[str, float]) -> float:
    """The headline number of a metric result (the entry named like the metric)."""
    return float(scores[name])
