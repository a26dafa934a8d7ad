"""Scoring of generated answers: per task with the task's metric and normalisation, groups, attributes."""

from __future__ import annotations

import pytest

from audiomoe.data.manifest import AudioRecord
from audiomoe.evaluation.runner import markdown_report, score_predictions, text_prompt


def rec(key: str, task: str, answer: str, **attrs: str) -> AudioRecord:
    return AudioRecord(
        key=key, audio=f"{key}.wav", task=task, instruction="q?", answer=answer, attributes=attrs
    )


def test_per_task_group_and_attribute_scores() -> None:
    records = [
        rec("a", "gender", "female", accent="british"),
        rec("b", "gender", "male", accent="british"),
        rec("c", "gender", "female", accent="american"),
        rec("d", "instrument", "piano"),
        rec("e", "transcribe", "the cat sat on the mat"),
    ]
    predictions = ["The speaker is female.", "female", "FEMALE", "organ", "the cat sat on a mat"]
    report = score_predictions(records, predictions)
    gender = report["tasks"]["gender"]
    assert gender["metric"] == "accuracy" and gender["accuracy"] == pytest.approx(
        2 / 3
    )  # label found in a sentence
    assert report["tasks"]["instrument"]["score"] == 0.0
    assert report["tasks"]["transcribe"]["wer"] == pytest.approx(1 / 6)
    assert report["tasks"]["transcribe"]["score"] == pytest.approx(5 / 6)  # 1 - WER
    assert report["groups"] == {
        "music": 0.0,
        "paralinguistic": pytest.approx(2 / 3),
        "semantic": pytest.approx(5 / 6),
    }
    assert report["overall"] == pytest.approx((0 + 2 / 3 + 5 / 6) / 3)
    accents = report["attributes"]["gender"]["accent"]
    assert accents["british"] == {"n": 2, "score": 0.5} and accents["american"] == {"n": 1, "score": 1.0}
    table = markdown_report(report)
    assert "| gender | paralinguistic | accuracy | 0.667 |" in table and "| semantic | 0.833 |" in table


def test_text_prompt_puts_the_transcript_in_place_of_the_audio() -> None:
    record = AudioRecord(
        "k", "k.wav", "digit", "Which digit is spoken?", "seven", transcript="press seven now"
    )
    assert text_prompt(record) == '"press seven now"\nWhich digit is spoken?'


def test_task_score_direction_comes_from_the_metric_registry() -> None:
    """A lower-is-better metric is one registry entry; task_score needs no edit to turn it into a score."""
    from audiomoe.evaluation.metrics import HIGHER_IS_BETTER, METRICS, compute_metric, register_metric
    from audiomoe.evaluation.runner import task_score

    @register_metric("dummy_miss_rate", higher_is_better=False)
    def miss_rate(predictions, references, **_):
        return {"dummy_miss_rate": sum(p != r for p, r in zip(predictions, references)) / len(references)}

    try:
        scores = compute_metric("dummy_miss_rate", ["a", "b", "c", "d"], ["a", "b", "c", "x"])
        assert task_score("dummy_miss_rate", scores) == 0.75
        assert task_score("dummy_miss_rate", {"dummy_miss_rate": 1.5}) == 0.0
        assert task_score("accuracy", {"accuracy": 0.25, "n": 4}) == 0.25
        assert (
            task_score("wer", {"wer": 0.1}) == pytest.approx(0.9) and task_score("cer", {"cer": 0.2}) == 0.8
        )
    finally:
        del METRICS["dummy_miss_rate"], HIGHER_IS_BETTER["dummy_miss_rate"]


def test_a_task_with_an_unregistered_metric_fails_when_scored() -> None:
    from audiomoe.data.tasks import TASKS, Task, register_task

    register_task(Task("dummy_task", "sound", ("What is it?", "Name it."), "a word", metric="bleu_typo"))
    try:
        with pytest.raises(ValueError, match=r"metric 'bleu_typo' is unknown; choose one of \[.*'accuracy'"):
            score_predictions([rec("a", "dummy_task", "dog")], ["dog"])
    finally:
        del TASKS["dummy_task"]
