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
