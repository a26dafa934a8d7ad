"""Per-item scores of eval reports and the statistics of arm comparisons (audiomoe.evaluation.stats)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from audiomoe.data.manifest import AudioRecord
from audiomoe.data.tasks import get_task
from audiomoe.evaluation.runner import score_predictions
from audiomoe.evaluation.stats import chance_levels, compare, comparison_markdown, report_items

# One task per group and a WER task, so every scope (task, group, overall) and both metrics are exercised.
TASKS = ("transcribe", "digit", "gender", "sound_event", "instrument", "scene")


def rec(key: str, task: str, answer: str) -> AudioRecord:
    return AudioRecord(key=key, audio=f"{key}.wav", task=task, instruction="q?", answer=answer)


def synthetic_report(seed: int, outcomes: np.ndarray, tasks: tuple[str, ...] = TASKS, words: int = 8) -> dict:
    """A report with only ``items``: item i belongs to ``tasks[i % len(tasks)]``; ``outcomes[i]`` in [0, 1] is
    correct (accuracy) or the fraction of ``words`` words right (WER task)."""
    items = []
    for i, outcome in enumerate(outcomes):
        task = get_task(tasks[i % len(tasks)])
        item = {"key": f"k{i}", "task": task.name, "group": task.group, "metric": task.metric}
        if task.metric == "wer":
            item |= {"errors": int(round((1 - outcome) * words)), "words": words}
        else:
            item["correct"] = int(round(outcome))
        items.append(item)
    return {"seed": seed, "items": items}


def bernoulli_arm(
    rate: float | np.ndarray, n: int, seeds: int, rng: np.random.Generator, **kw: object
) -> list:
    return [synthetic_report(s, (rng.random(n) < rate).astype(float), **kw) for s in range(seeds)]


# -------------------------------------------------------------------------------------------- per-item scores
def test_item_errors_and_words_sum_to_the_task_wer_exactly() -> None:
    rng = np.random.default_rng(3)
    vocab = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "twenty",
        "five",
        "25",
        "mr",
        "mister",
        "colour",
        "color",
        "ok",
    ]
    records, predictions = [], []
    for i in range(120):
        ref = " ".join(rng.choice(vocab, size=int(rng.integers(0, 9))))  # some empty references
        hyp = " ".join(rng.choice(vocab, size=int(rng.integers(0, 9))))  # some empty hypotheses
        records.append(rec(f"t{i}", "transcribe", ref))
        predictions.append(hyp)
        records.append(rec(f"d{i}", "digit", str(i % 10)))
        predictions.append(["seven", "7", "the digit is three", "nine"][i % 4])
    report = score_predictions(records, predictions)
    items = report["items"]
    assert [(it["key"], it["task"]) for it in items] == [
        (r.key, r.task) for r in records
    ]  # one per record, in order
    wer_items = [it for it in items if it["task"] == "transcribe"]
    assert all(set(it) == {"key", "task", "group", "metric", "errors", "words"} for it in wer_items)
    assert sum(it["words"] == 0 for it in wer_items) > 0  # empty references are in the test and count (0, 0)
    errors, words = sum(it["errors"] for it in wer_items), sum(it["words"] for it in wer_items)
    assert errors / words == report["tasks"]["transcribe"]["wer"]  # exactly, not approximately
    digit = [it for it in items if it["task"] == "digit"]
    assert all(it["metric"] == "accuracy" and it["group"] == "semantic" for it in digit)
    assert sum(it["correct"] for it in digit) / len(digit) == report["tasks"]["digit"]["accuracy"]
    assert 0 < report["tasks"]["digit"]["accuracy"] < 1
    assert {"tasks", "groups", "overall", "attributes", "n"} <= set(
        report
    )  # the existing report is unchanged


def test_items_rebuilt_from_predictions_match_the_report_items() -> None:
    records = [rec("a", "gender", "female"), rec("b", "transcribe", "the red cat"), rec("c", "mode", "minor")]
    predictions = ["a woman", "a red cat sat", "major"]
    report = score_predictions(records, predictions)
    old = {"predictions": [{"key": r.key, "task": r.task, "prediction": p, "answer": r.answer}
                           for r, p in zip(records, predictions)]}  # fmt: skip
    assert report_items(old) == report["items"]
    assert (report["items"][1]["errors"], report["items"][1]["words"]) == (
        2,
        3,
    )  # a substitution, an insertion
    assert [it.get("correct") for it in report["items"]] == [1, None, 0]
    with pytest.raises(ValueError, match="no per-item scores"):
        report_items({"overall": 0.5})


def test_point_estimates_are_the_reports_own_scores_averaged_over_seeds() -> None:
    rng = np.random.default_rng(0)
    # References of different lengths: the corpus WER (summed errors / summed words) is not a mean of item WERs.
    pairs = [
        ("transcribe", "the cat sat on the mat"),
        ("gender", "male"),
        ("transcribe", "dogs bark"),
        ("instrument", "piano"),
        ("tempo", "fast"),
        ("transcribe", "a bird sang in the old green tree"),
    ]
    records = [rec(f"k{i}", task, answer) for i, (task, answer) in enumerate(pairs * 8)]
    guesses = {
        "transcribe": ["the cat sat", "a cat sat on the mat", "dogs", "a bird sang"],
        "gender": ["male", "female"],
        "instrument": ["piano", "organ"],
        "tempo": ["fast", "slow", "medium"],
    }
    reports = [
        score_predictions(records, [str(rng.choice(guesses[r.task])) for r in records]) for _ in range(3)
    ]
    result = compare({"moe": reports}, resamples=50)
    arm = result["arms"]["moe"]
    for group in reports[0]["groups"]:
        assert arm["groups"][group]["mean"] == pytest.approx(np.mean([r["groups"][group] for r in reports]))
        assert arm["groups"][group]["per_seed"] == pytest.approx([r["groups"][group] for r in reports])
    for task in reports[0]["tasks"]:
        assert arm["tasks"][task]["mean"] == pytest.approx(
            np.mean([r["tasks"][task]["score"] for r in reports])
        )
    assert arm["overall"]["overall"]["mean"] == pytest.approx(np.mean([r["overall"] for r in reports]))


# ------------------------------------------------------------------------------------------------ verdicts
def test_a_clearly_better_arm_is_called_better_everywhere() -> None:
    rng = np.random.default_rng(1)
    arms = {"moe": bernoulli_arm(0.9, 400, 3, rng), "linear": bernoulli_arm(0.5, 400, 3, rng)}
    result = compare(arms, reference="moe")
    diff = result["differences"]["linear"]
    assert diff["overall"]["overall"]["difference"] == pytest.approx(0.4, abs=0.06)
    for scope in ("groups", "overall"):
        for name, d in diff[scope].items():
            assert d["low"] > 0 and d["p"] < 0.01, (scope, name, d)
    verdicts = result["verdicts"]
    assert len(verdicts) == len(result["groups"]) + 1
    assert all(v["direction"] == "better" and v["arm"] == "linear" for v in verdicts)
    overall = next(v for v in verdicts if v["scope"] == "overall")
    assert overall["sentence"].startswith("MoE better than linear overall (+0.")
    assert "95% CI +0." in overall["sentence"] and "p<0.001" in overall["sentence"]
    # The same data with linear as the reference: every verdict turns into "worse".
    flipped = compare(arms, reference="linear")
    assert {v["direction"] for v in flipped["verdicts"]} == {"worse"}
    assert flipped["verdicts"][0]["sentence"].startswith("linear worse than moe on ")


def test_arms_from_one_distribution_show_no_detectable_difference() -> None:
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0.3, 0.95, 400)  # per item, shared by both arms (as real test items are)
    arms = {"moe": bernoulli_arm(difficulty, 400, 3, rng), "linear": bernoulli_arm(difficulty, 400, 3, rng)}
    result = compare(arms)
    overall = result["differences"]["linear"]["overall"]["overall"]
    assert overall["low"] < 0 < overall["high"] and overall["p"] > 0.2
    assert 0 < overall["detectable"] < 0.15
    sentence = next(v for v in result["verdicts"] if v["scope"] == "overall")["sentence"]
    assert sentence.startswith("no difference detectable at this scale between moe and linear overall (")
    assert f"detectable \u2265 {overall['detectable']:.3f}" in sentence
    assert {v["direction"] for v in result["verdicts"]} == {"none"}


def test_identical_arms_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(4)
    reports = bernoulli_arm(0.6, 300, 3, rng)
    result = compare({"moe": reports, "twin": [dict(r) for r in reports]})
    for scope in ("tasks", "groups", "overall"):
        for d in result["differences"]["twin"][scope].values():
            assert d["difference"] == 0 and d["low"] == 0 == d["high"] and d["p"] == 1.0
    assert {v["direction"] for v in result["verdicts"]} == {"none"}


def test_false_positive_rate_of_the_verdict_under_the_null() -> None:
    """Over many datasets where both arms share one distribution, "better"/"worse" is rare (nominal 5 %)."""
    rng = np.random.default_rng(5)
    hits = 0
    for r in range(60):
        difficulty = rng.uniform(0.2, 0.95, 240)
        arms = {a: bernoulli_arm(difficulty, 240, 3, rng, tasks=("gender",)) for a in ("moe", "linear")}
        d = compare(arms, resamples=300, seed=r)["differences"]["linear"]["overall"]["overall"]
        hits += d["low"] > 0 or d["high"] < 0
    assert hits <= 6  # <= 10 %


# ------------------------------------------------------------------------------------------------ intervals
def test_interval_of_a_binomial_proportion_covers_it_with_the_normal_width() -> None:
    p, n = 0.7, 2000
    rng = np.random.default_rng(6)
    arm = [synthetic_report(0, (rng.random(n) < p).astype(float), tasks=("gender",))]
    result = compare({"moe": arm})
    overall = result["arms"]["moe"]["overall"]["overall"]
    assert overall["low"] < p < overall["high"]
    assert overall["high"] - overall["low"] == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / n), rel=0.2)
    assert result["notes"] and "one seed" in result["notes"][0]
    assert result["method"]["seeds_resampled"] == {"moe": False}
    # and the coverage over repeated samples is near 95 %, neither too narrow nor too wide
    covered = 0
    for r in range(150):
        sample = [synthetic_report(0, (rng.random(300) < p).astype(float), tasks=("gender",))]
        v = compare({"moe": sample}, resamples=400, seed=r)["arms"]["moe"]["overall"]["overall"]
        covered += v["low"] <= p <= v["high"]
    assert 0.88 <= covered / 150 <= 0.99


def test_seed_to_seed_variation_enters_the_interval() -> None:
    # Every item right in seeds 0 and 2, wrong in seed 1: items carry no variance, seeds all of it.
    arm = [synthetic_report(s, np.full(90, float(s != 1)), tasks=("gender",)) for s in range(3)]
    v = compare({"moe": arm})["arms"]["moe"]["overall"]["overall"]
    assert v["mean"] == pytest.approx(2 / 3) and v["per_seed"] == [1.0, 0.0, 1.0]
    assert v["low"] == 0.0 and v["high"] == 1.0  # all-seed-1 draws (1/27) and no-seed-1 draws (8/27)


def test_pairing_narrows_the_interval_of_a_difference_between_correlated_arms() -> None:
    rng = np.random.default_rng(7)
    n, arms = 500, {"moe": [], "linear": []}
    difficulty = rng.uniform(0.05, 0.95, n)
    for s in range(3):
        u = rng.random(n)  # the same draw for both arms: strongly positively correlated outcomes
        arms["moe"].append(synthetic_report(s, (u < difficulty + 0.04).astype(float)))
        arms["linear"].append(synthetic_report(s, (u < difficulty).astype(float)))
    widths = {}
    for paired in (True, False):
        d = compare(arms, paired=paired)["differences"]["linear"]["overall"]["overall"]
        widths[paired] = d["high"] - d["low"]
    assert widths[True] < 0.6 * widths[False], widths


# --------------------------------------------------------------------------------------------------- errors
def test_mismatched_items_are_one_error_naming_the_arm_and_seed() -> None:
    rng = np.random.default_rng(8)
    arms = {"moe": bernoulli_arm(0.7, 60, 2, rng), "linear": bernoulli_arm(0.7, 60, 2, rng)}
    arms["linear"][1]["items"][5]["key"] = "someone-else"
    with pytest.raises(
        ValueError, match=r"arm 'linear' seed 1: items differ from those of arm 'moe': 1 missing"
    ):
        compare(arms)
    arms["linear"][1]["items"] = arms["linear"][1]["items"][:-1]
    arms["linear"][1]["source"] = "runs/linear/seed-1/eval.json"
    with pytest.raises(ValueError, match=r"arm 'linear' seed 1 \(runs/linear/seed-1/eval.json\)"):
        compare(arms)
    with pytest.raises(ValueError, match="reference arm 'dense' is not among the arms"):
        compare(arms, reference="dense")


def test_reordered_items_are_aligned_by_key() -> None:
    rng = np.random.default_rng(9)
    reports = bernoulli_arm(0.7, 120, 2, rng)
    shuffled = [dict(r, items=list(reversed(r["items"]))) for r in reports]
    result = compare({"moe": reports, "linear": shuffled}, resamples=100)
    assert result["differences"]["linear"]["overall"]["overall"]["difference"] == 0


# --------------------------------------------------------------------------------------------- chance, text
def test_chance_levels_by_label_set_majority_and_wer() -> None:
    records = [
        rec("a", "gender", "male"),
        rec("b", "speaker", "alice"),
        rec("c", "transcribe", "hello there"),
    ]
    records += [rec(f"q{i}", "audio_qa", "yes" if i < 3 else "no") for i in range(4)]
    chance = chance_levels(records)
    assert chance["tasks"] == {"audio_qa": 0.75, "gender": 0.5, "speaker": 1 / 12, "transcribe": 0.0}
    assert chance["groups"] == {"paralinguistic": pytest.approx((0.5 + 1 / 12) / 2), "semantic": 0.375}
    assert chance["overall"] == pytest.approx(((0.5 + 1 / 12) / 2 + 0.375) / 2)
    assert "majority" in chance["rules"]["audio_qa"]
    # report items carry no answers: an open task's chance is then unknown (None), not guessed
    unknown = chance_levels([{"task": "audio_qa"}, {"task": "digit"}, {"task": "mode"}])
    assert unknown["tasks"] == {"audio_qa": None, "digit": 0.1, "mode": 0.5}
    assert unknown["groups"] == {"music": 0.5, "semantic": None} and unknown["overall"] is None


def test_markdown_and_json_of_a_comparison() -> None:
    rng = np.random.default_rng(10)
    arms = {a: bernoulli_arm(r, 200, 3, rng) for a, r in (("moe", 0.8), ("linear", 0.6), ("mlp", 0.78))}
    result = compare(arms, resamples=300)
    json.dumps(result, allow_nan=False)  # JSON-able, no NaN
    assert list(result["arms"]) == ["moe", "linear", "mlp"]  # reference first
    assert {
        "reference",
        "arms",
        "differences",
        "verdicts",
        "chance",
        "best_vs_chance",
        "method",
        "notes",
    } <= set(result)
    assert set(result["method"]) >= {"interval", "p_value", "detectable", "verdict", "paired"}
    assert result["best_vs_chance"]["overall"]["arm"] == "moe"
    lines = comparison_markdown(result)
    groups = list(result["groups"])
    assert "| arm | seeds | " + " | ".join(groups) + " | overall |" in lines
    assert any(line.startswith("| moe | 3 | 0.") for line in lines)
    assert any(line.startswith("| chance | | ") for line in lines)
    assert any(line.startswith("| linear | overall | +0.") for line in lines)
    assert sum(line.startswith("- ") for line in lines) == 2 * (len(groups) + 1)
