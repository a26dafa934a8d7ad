"""Metric registry: a task names its metric, evaluation looks it up here; the entry says which way is better.

    score = compute_metric("wer", predictions, references)   # -> {"wer": 0.12, "n": 40, ...}

Every metric is called as ``fn(predictions, references, normalize=None, languages=None)``: ``normalize`` is the
task's answer normaliser where it has one of its own (labels, a named normaliser; None = plain text), and
``languages`` the per-item language codes (the record's ``language`` attribute, else the task's ``language``).

- ``wer`` / ``cer``: jiwer on text normalised for the item's language (:mod:`audiomoe.evaluation.normalizers`:
  Whisper's English normaliser with its spelling map, a basic multilingual one elsewhere, no spaces in CER for
  languages written without them), as Whisper papers report it. Lower is better.
- ``accuracy`` / ``exact_match`` / ``macro_f1``: strings compared after the answer normalisation (default: plain
  text normalisation for the language). ``exact_match`` is the metric of open tasks nobody declared.
- ``bleu`` / ``chrf``: sacrebleu's corpus BLEU and chrF on the raw text (sacrebleu's own tokenisation; ``zh``
  and ``char`` tokenisers for languages without spaces), 0-100 as the field reports them.
- ``mcq_accuracy``: multiple choice (MMAU / MMAR style): a prediction is mapped to a choice by an explicit letter
  ("(B)", "B.", "answer: b") or by the choice text it contains; see :mod:`audiomoe.evaluation.mcq`.

A new metric is one entry: ``@register_metric("name", higher_is_better=..., scale=..., items=...)``; ``scale``
(100 for BLEU) maps the value to the 0-1 task score that groups average, ``items`` gives per-item sufficient
statistics for the paired statistics of ``audiomoe compare``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jiwer

from audiomoe.evaluation.normalizers import (
    NO_SPACE_LANGUAGES,
    base_language,
    basic_normalize,
    is_english,
    normalize_for_error_rate,
)
from audiomoe.text import normalize_label, normalize_text

Normalize = Callable[[str], str]
MetricFn = Callable[..., dict[str, float]]
ItemStats = Callable[..., list[dict[str, int]]]
METRICS: dict[str, MetricFn] = {}
HIGHER_IS_BETTER: dict[str, bool] = {}
SCALES: dict[str, float] = {}  # value / scale is the 0-1 task score (BLEU and chrF are 0-100)
ITEM_STATS: dict[str, ItemStats] = {}  # per-item sufficient statistics (see evaluation.runner.score_items)


def register_metric(
    name: str, higher_is_better: bool = True, scale: float = 1.0, items: ItemStats | None = None
) -> Callable[[MetricFn], MetricFn]:
    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = fn
        HIGHER_IS_BETTER[name] = higher_is_better
        SCALES[name] = scale
        if items is not None:
            ITEM_STATS[name] = items
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


def task_value_to_score(name: str, value: float) -> float:
    """A metric value as a 0-1 higher-is-better score: ``value / scale``, or ``max(0, 1 - value / scale)`` for a
    metric registered with ``higher_is_better=False`` (WER, CER)."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r} is unknown; choose one of {sorted(METRICS)}")
    value = value / SCALES.get(name, 1.0)
    return value if HIGHER_IS_BETTER[name] else max(0.0, 1.0 - value)


def _languages(languages: Sequence[str | None] | None, n: int) -> list[str]:
    return [str(x or "") for x in languages] if languages is not None else [""] * n


def _text_norm(language: str) -> Normalize:
    """Default answer normalisation: lower case and punctuation removed (no spaces inserted outside English)."""
    return normalize_text if is_english(language) else basic_normalize


def _error_pairs(
    predictions: Sequence[str], references: Sequence[str], unit: str, normalize: Normalize | None,
    languages: Sequence[str | None] | None,
) -> list[tuple[str, str]]:  # fmt: skip
    """(hypothesis, reference) after the task's normaliser (if any), then the language's error-rate one."""
    first = normalize or (lambda s: s)
    langs = _languages(languages, len(references))
    return [
        (normalize_for_error_rate(first(p), lang, unit), normalize_for_error_rate(first(r), lang, unit))
        for p, r, lang in zip(predictions, references, langs)
    ]


def _error_rate(
    predictions: Sequence[str], references: Sequence[str], unit: str, normalize: Normalize | None = None,
    languages: Sequence[str | None] | None = None,
) -> dict[str, float]:  # fmt: skip
    pairs = _error_pairs(predictions, references, unit, normalize, languages)
    # jiwer cannot score an empty reference; Whisper's evaluations drop them too (counted, not hidden).
    kept = [(p, r) for p, r in pairs if r.strip()]
    if not kept:
        return {unit: float("nan"), "n": 0, "empty_references": len(pairs)}
    hyps, refs = [p for p, _ in kept], [r for _, r in kept]
    value = jiwer.wer(refs, hyps) if unit == "wer" else jiwer.cer(refs, hyps)
    return {unit: float(value), "n": len(kept), "empty_references": len(pairs) - len(kept)}


def error_counts(
    predictions: Sequence[str], references: Sequence[str], unit: str = "wer",
    normalize: Normalize | None = None, languages: Sequence[str | None] | None = None,
) -> list[tuple[int, int]]:  # fmt: skip
    """Per-item ``(errors, reference length)`` in words (``unit="wer"``) or characters (``"cer"``), after the
    same normalisation as :func:`word_error_rate`.

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
    pairs = _error_pairs(predictions, references, unit, normalize, languages)
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


def _word_items(predictions: Sequence[str], references: Sequence[str], **kwargs: Any) -> list[dict[str, int]]:
    return [{"errors": e, "words": w} for e, w in error_counts(predictions, references, "wer", **kwargs)]


def _char_items(predictions: Sequence[str], references: Sequence[str], **kwargs: Any) -> list[dict[str, int]]:
    return [{"errors": e, "chars": c} for e, c in error_counts(predictions, references, "cer", **kwargs)]


def _matches(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None,
    languages: Sequence[str | None] | None = None, default: Normalize | None = None,
) -> list[bool]:  # fmt: skip
    langs = _languages(languages, len(references))
    return [
        (norm := normalize or default or _text_norm(lang))(p) == norm(r)
        for p, r, lang in zip(predictions, references, langs)
    ]


def _correct_items(
    predictions: Sequence[str], references: Sequence[str], **kwargs: Any
) -> list[dict[str, int]]:
    return [{"correct": int(hit)} for hit in _matches(predictions, references, **kwargs)]


@register_metric("wer", higher_is_better=False, items=_word_items)
def word_error_rate(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None,
    languages: Sequence[str | None] | None = None, **_: Any,
) -> dict[str, float]:  # fmt: skip
    """Corpus WER (total edits / total reference words) after language-aware normalisation."""
    return _error_rate(predictions, references, "wer", normalize, languages)


@register_metric("cer", higher_is_better=False, items=_char_items)
def char_error_rate(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None,
    languages: Sequence[str | None] | None = None, **_: Any,
) -> dict[str, float]:  # fmt: skip
    """Corpus CER; for languages without spaces whitespace is not counted."""
    return _error_rate(predictions, references, "cer", normalize, languages)


@register_metric("accuracy", items=_correct_items)
def accuracy(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None,
    languages: Sequence[str | None] | None = None, **_: Any,
) -> dict[str, float]:  # fmt: skip
    """Exact match after answer normalisation (default :func:`normalize_label`)."""
    hits = sum(_matches(predictions, references, normalize, languages, default=normalize_label))
    return {"accuracy": hits / len(references) if references else float("nan"), "n": len(references)}


@register_metric("exact_match", items=_correct_items)
def exact_match(
    predictions: Sequence[str], references: Sequence[str], normalize: Normalize | None = None,
    languages: Sequence[str | None] | None = None, **_: Any,
) -> dict[str, float]:  # fmt: skip
    """Share of answers equal to the reference after text normalisation for the item's language (lower case,
    punctuation removed; Chinese punctuation removed without inserting spaces)."""
    hits = sum(_matches(predictions, references, normalize, languages))
    return {"exact_match": hits / len(references) if references else float("nan"), "n": len(references)}


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


def _bleu_tokenizer(languages: Sequence[str | None] | None) -> str:
    """sacrebleu tokeniser for the corpus's (first) language: zh for Chinese, char for other unspaced scripts."""
    lang = base_language(next((x for x in languages or () if x), ""))
    if lang in ("zh", "yue", "cmn", "wuu"):
        return "zh"
    return "char" if lang in NO_SPACE_LANGUAGES else "13a"


@register_metric("bleu", scale=100.0)
def bleu(
    predictions: Sequence[str],
    references: Sequence[str],
    languages: Sequence[str | None] | None = None,
    **_: Any,
) -> dict[str, float]:
    """sacrebleu corpus BLEU (one reference per item), 0-100."""
    import sacrebleu

    tokenize = _bleu_tokenizer(languages)
    result = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize)
    return {"bleu": float(result.score), "n": len(references), "tokenize": tokenize}  # type: ignore[dict-item]


@register_metric("chrf", scale=100.0)
def chrf(predictions: Sequence[str], references: Sequence[str], **_: Any) -> dict[str, float]:
    """sacrebleu corpus chrF (character n-gram F-score), 0-100."""
    import sacrebleu

    result = sacrebleu.corpus_chrf(list(predictions), [list(references)])
    return {"chrf": float(result.score), "n": len(references)}


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
