"""The siblings recipe's pure parts: arms at matched active parameters, the foundation's text views, and the
gap-reduction arithmetic on a constructed comparison."""

from __future__ import annotations

import json

import pytest

from audiomoe.adapters.presets import count_parameters
from audiomoe.data.corpus import plan_text_items
from audiomoe.data.manifest import read_manifest
from audiomoe.recipes.siblings.arms import architecture_adapters
from audiomoe.recipes.siblings.pipeline import write_foundation_manifest
from audiomoe.recipes.siblings.report import distillation_summary
from audiomoe.recipes.siblings.settings import FULL


def test_architecture_arms_match_the_dense_active_parameters():
    adapters = architecture_adapters(FULL, 384, 128)
    target = count_parameters(adapters["mlp"])["active_params"]
    for name in ("moe", "moue-per-block", "moue-staggered"):
        active = count_parameters(adapters[name])["active_params"]
        assert abs(active - target) <= 0.02 * target, name
    # the upcycling source has the MoE's expert width, so the upcycled MoE has the moe arm's shape
    assert adapters["mlp-narrow"]["hidden_dim"] == adapters["moe"]["expert_hidden_dim"]
    assert adapters["moue-staggered"]["window"] == 2 * adapters["moue-per-block"]["window"]


def test_foundation_manifest_adds_a_text_view_of_semantic_items_only(tmp_path):
    lines = [
        {"key": "a", "audio": "a.wav", "task": "digit", "answer": "two", "transcript": "two"},
        {"key": "b", "audio": "b.wav", "task": "gender", "answer": "male", "transcript": "hello"},
        {"key": "c", "audio": "c.wav", "task": "keyword", "answer": "stop"},
    ]
    for name in "abc":
        (tmp_path / f"{name}.wav").write_bytes(b"")  # only their existence is checked
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert write_foundation_manifest(tmp_path / "train.jsonl", tmp_path / "f.jsonl") == 1
    records = read_manifest(tmp_path / "f.jsonl")
    assert [r.key for r in records] == ["a", "b", "c", "a-text"]
    assert records[-1].instruction.startswith('"two"\n') and records[-1].answer == "two"
    # text-only items (no audio file) add their text views only; the foundation reads the manifest's text
    items = plan_text_items(0, ("digit", "arithmetic"), 3)
    assert write_foundation_manifest(tmp_path / "train.jsonl", tmp_path / "g.jsonl", items) == 1 + 6
    records = read_manifest(tmp_path / "g.jsonl", check_files=False)
    assert [r.key for r in records][3:] == ["a-text"] + [f"{r.key}-text" for r in items]
    assert all(
        r.instruction == f'"{item.transcript}"\n{item.instruction}' for r, item in zip(records[4:], items)
    )


def test_gap_reduction_follows_the_papers_definition():
    # start: text 0.8, audio 0.5 -> gap 0.3; cord's audio 0.62 (+0.12 = 40% of the gap), interval +0.06..+0.18
    def arm(mean, digit):
        return {"groups": {"semantic": {"mean": mean}}, "tasks": {"digit": {"mean": digit}}}

    versus_base = {
        "arms": {"base": arm(0.5, 0.4), "cord": arm(0.62, 0.7)},
        "differences": {"cord": {"groups": {
            "semantic": {"difference": -0.12, "low": -0.18, "high": -0.06, "p": 0.01, "detectable": 0.05},
            "music": {"difference": 0.02, "low": -0.01, "high": 0.05, "p": 0.3},
        }}},
    }  # fmt: skip
    base_evals = [{"modality_gap": {"digit": {"text": 0.9}, "keyword": {"text": 0.7}}}]
    summary = distillation_summary(base_evals, versus_base, ("cord",), "base")
    cord = summary["methods"]["cord"]
    assert summary["gap_before"] == pytest.approx(0.3) and cord["gap_after"] == pytest.approx(0.18)
    assert cord["gap_reduction_pct"] == pytest.approx({"difference": 40.0, "low": 20.0, "high": 60.0})
    assert cord["retention"]["music"]["difference"] == pytest.approx(-0.02)  # method − start
    # per task: the start's text score, the start's and each method's audio score
    assert summary["tasks"] == {"digit": {"text_start": 0.9, "audio": {"base": 0.4, "cord": 0.7}},
                                "keyword": {"text_start": 0.7, "audio": {}}}  # fmt: skip
