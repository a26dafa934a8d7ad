"""Metric registry on hand-made predictions: WER/CER with Whisper normalisation, accuracy, macro-F1, MCQ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiomoe.evaluation.mcq import McqItem, choose, extract_letter, load_mcq_json
from audiomoe.evaluation.metrics import METRICS, compute_metric


def test_wer_uses_whisper_normalisation() -> None:
    refs = ["Hello, Mr. Smith!", "the cat sat on the mat"]
    # Case, punctuation and "Mr." vs "mister" do not count; one substitution and one deletion do.
    preds = ["hello mister smith", "the dog sat on mat"]
    score = compute_metric("wer", preds, refs)
    assert score["wer"] == pytest.approx(2 / 9) and score["n"] == 2
    assert compute_metric("wer", refs, refs)["wer"] == 0.0


def test_empty_references_are_counted_not_scored() -> None:
    score = compute_metric("wer", ["a b", "anything"], ["a b", "um"])  # a filler normalises to nothing
    assert score["wer"] == 0.0 and score["n"] == 1 and score["empty_references"] == 1


def test_cer() -> None:
    assert compute_metric("cer", ["abcd"], ["abce"])["cer"] == pytest.approx(0.25)


def test_accuracy_with_task_normalisation() -> None:
    preds = ["Female.", "male", "  FEMALE ", "child"]
    refs = ["female", "male", "female", "male"]
    assert compute_metric("accuracy", preds, refs)["accuracy"] == 0.75
    first_word = lambda s: s.lower().split()[0] if s.split() else ""  # noqa: E731
    assert (
        compute_metric("accuracy", ["yes it is", "no"], ["yes", "yes"], normalize=first_word)["accuracy"]
        == 0.5
    )


def test_macro_f1_by_hand() -> None:
    refs = ["a", "a", "a", "b", "c"]
    preds = ["a", "a", "b", "b", "a"]
    # a: tp2 fp1 fn1 -> 2/3 ; b: tp1 fp1 fn0 -> 2/3 ; c: tp0 -> 0
    score = compute_metric("macro_f1", preds, refs)
    assert score["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert score["accuracy"] == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(B)", 1),
        ("B. a violin", 1),
        ("The answer is c", 2),
        ("Answer: (D)", 3),
        ("d", 3),
        ("I think it is a violin playing", None),
        ("(E)", None),  # only four choices
    ],
)
def test_letter_extraction(text: str, expected: int | None) -> None:
    assert extract_letter(text, 4) == expected


def test_choice_text_fallback_prefers_longest() -> None:
    choices = ["chord", "major chord", "silence"]
    assert choose("It sounds like a major chord.", choices) == 1
    assert choose("nothing matches", choices) is None


def test_mcq_json_and_accuracy(tmp_path: Path) -> None:
    data = [
        {"id": "1", "audio_id": "a.wav", "question": "Which instrument?", "choices": ["piano", "violin"],
         "answer": "violin", "task": "music"},
        {"id": "2", "audio_path": "b.wav", "question": "How many?", "choices": ["one", "two", "three"],
         "answer": "three", "category": "sound"},
        {"id": "3", "question": "Who?", "choices": ["a man", "a woman"], "answer": "B"},
    ]  # fmt: skip
    path = tmp_path / "mmau.json"
    path.write_text(json.dumps(data))
    items = load_mcq_json(path)
    assert [i.answer_index for i in items] == [1, 2, 1]
    assert items[0].audio == str(tmp_path / "a.wav") and items[1].category == "sound"
    assert "(B) violin" in items[0].prompt()
    score = compute_metric("mcq_accuracy", ["(B)", "one", "blah"], items)
    assert score["mcq_accuracy"] == pytest.approx(1 / 3) and score["unparsed"] == 1


def test_bad_mcq_json_names_the_item(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"question": "q", "choices": ["x", "y"], "answer": "z"}]))
    with pytest.raises(ValueError, match=r"bad.json: item 0: answer 'z'"):
        load_mcq_json(path)


def test_registry_rejects_unknown_and_mismatched() -> None:
    assert {"wer", "cer", "accuracy", "macro_f1", "mcq_accuracy"} <= set(METRICS)
    with pytest.raises(ValueError, match="unknown"):
        compute_metric("bleu9", [], [])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        compute_metric("accuracy", ["a", "b"], ["a"])
    assert isinstance(McqItem("q", ["a"], 0).prompt(), str)


def test_english_wer_uses_whispers_spelling_map() -> None:
    """British and American spellings are one word to Whisper's normaliser (its english.json map)."""
    assert compute_metric("wer", ["the color is gray"], ["The colour is grey."])["wer"] == 0.0


def test_cer_without_spaces_ignores_punctuation_and_inserts_no_spaces() -> None:
    score = compute_metric("cer", ["你好世界"], ["你好，世界。"], languages=["zh"])
    assert score["cer"] == 0.0
    assert compute_metric("cer", ["你好世"], ["你好，世界。"], languages=["zh-CN"])["cer"] == pytest.approx(
        0.25
    )


def test_basic_normaliser_for_other_languages() -> None:
    from audiomoe.evaluation.normalizers import basic_normalize, normalize_for_error_rate

    assert basic_normalize("Ça va, Zoë?  Très «bien»!") == "ça va zoë très bien"
    assert normalize_for_error_rate("你好 世界。", "zh", "cer") == "你好世界"
    assert normalize_for_error_rate("你好 世界。", "zh", "wer") == "你好 世界"  # words stay words
    assert compute_metric("wer", ["ça va bien"], ["Ça va, bien!"], languages=["fr"])["wer"] == 0.0


def test_exact_match_bleu_and_chrf_directions_and_scales() -> None:
    from audiomoe.evaluation.metrics import HIGHER_IS_BETTER, SCALES, task_value_to_score

    assert compute_metric("exact_match", ["A dog.", "cat"], ["a dog", "dog"])["exact_match"] == 0.5
    assert (
        compute_metric("exact_match", ["你好世界"], ["你好，世界。"], languages=["zh"])["exact_match"] == 1.0
    )
    refs = ["the cat sat on the mat", "a quick brown fox jumps"]
    perfect = compute_metric("bleu", refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["tokenize"] == "13a"
    worse = compute_metric("bleu", ["the cat sat on a mat", "a slow brown fox jumps"], refs)["bleu"]
    assert 0 < worse < 100
    assert compute_metric("bleu", ["你好世界"], ["你好世界"], languages=["zh"])["tokenize"] == "zh"
    assert compute_metric("chrf", refs, refs)["chrf"] == pytest.approx(100.0)
    assert HIGHER_IS_BETTER["bleu"] and SCALES["bleu"] == 100.0 and not HIGHER_IS_BETTER["cer"]
    assert task_value_to_score("bleu", 42.0) == pytest.approx(0.42)
    assert task_value_to_score("wer", 0.25) == 0.75 and task_value_to_score("exact_match", 0.5) == 0.5


def test_open_tasks_and_declared_metrics_are_scored_without_special_cases() -> None:
    """A record whose task nobody declared is an open task (exact match, or the metric the record names);
    runner.score_predictions scores every metric through the registry alone."""
    from audiomoe.data.manifest import AudioRecord
    from audiomoe.data.tasks import OPEN_TASKS, declare_open_task, get_task
    from audiomoe.evaluation.runner import score_predictions

    try:
        assert get_task("caption_xyz").metric == "exact_match" and get_task("caption_xyz").group == "open"
        declare_open_task("translate_xyz", "bleu")
        with pytest.raises(ValueError, match="scored with 'bleu' by an earlier record"):
            declare_open_task("translate_xyz", "chrf")
        records = [
            AudioRecord("k1", "a.wav", "translate_xyz", "Translate.", "the cat sat on the mat"),
            AudioRecord("k2", "b.wav", "caption_xyz", "Describe.", "A dog barks."),
            AudioRecord("k3", "c.wav", "transcribe", "Transcribe.", "the colour is grey"),
        ]
        report = score_predictions(records, ["the cat sat on the mat", "a dog barks", "the color is gray"])
        tasks = report["tasks"]
        assert tasks["translate_xyz"]["bleu"] == pytest.approx(100.0)
        assert tasks["translate_xyz"]["score"] == pytest.approx(1.0)
        assert tasks["caption_xyz"]["exact_match"] == 1.0 and tasks["caption_xyz"]["group"] == "open"
        assert tasks["transcribe"]["wer"] == 0.0 and tasks["transcribe"]["score"] == 1.0
        items = {item["key"]: item for item in report["items"]}
        assert items["k3"]["errors"] == 0 and items["k2"]["correct"] == 1 and "correct" not in items["k1"]
    finally:
        OPEN_TASKS.pop("translate_xyz", None)
