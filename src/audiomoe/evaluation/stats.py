"""Statistics for comparisons of model arms (adapters) trained with several seeds and scored on the same items.

    result = compare({"moe": [eval_seed0, eval_seed1, eval_seed2], "linear": [...]}, reference="moe")
    print("\\n".join(comparison_markdown(result)))

Why this shape. A difference between two arms is a claim about a distribution over both test items and training
seeds, so every interval here comes from one bootstrap that resamples both:

- items: with replacement within each task (stratified, so every resample has each task's size), and the *same*
  draw for every arm, so the comparison is paired: an item that is hard for every arm moves all arms together and
  cancels out of their difference;
- seeds: the training seeds of an arm, with replacement (the same seed draw for every arm when all arms carry the
  same seed labels, since seed ``s`` fixes the same data order in every arm); with one seed there is nothing to
  resample, the interval covers items only, and the result says so in ``notes``.

Each resample recomputes the scores exactly as :func:`audiomoe.evaluation.runner.score_predictions` does from the
items' sufficient statistics (``correct`` or ``errors`` / ``words``): task accuracy = mean of ``correct``; corpus
WER = sum of errors / sum of words, task score = max(0, 1 - WER), per seed; group = mean of its tasks; overall =
mean of groups; an arm's value = mean over its (drawn) seeds. Intervals are bootstrap percentiles; the p-value of
a difference is read off the same resamples, so "the interval excludes 0" and "p < 1 - confidence" agree up to the
resolution of the resampling. The detectable difference turns the bootstrap standard error into the size a
two-sided test at that level would detect with 80 % power.

What to expect of it (simulated: two arms from one distribution, 300 items, 400 datasets, verdict at 95 %):
resampling both items and seeds counts the item-by-seed noise twice, so with no real seed-to-seed variation the
false-positive rate is below nominal (0.8 % with 3 seeds; 3.5 % with one seed, items only); with a real seed
effect (sd 0.05 of accuracy per seed) three seeds are too few to see it, and the rate rises to about 13 % (6 %
with 5 seeds). Three seeds are a floor, not a comfort: near-zero intervals deserve more seeds.

Shapes: ``B`` resamples, ``S`` seeds of an arm, ``n_t`` items of task ``t``. Every resample is a matrix product of
item weights ``(B, n_t)`` (how often each item was drawn) with per-seed item statistics ``(n_t, S)``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from audiomoe.data.tasks import get_task

SCOPES = ("tasks", "groups", "overall")
_DISPLAY = {"moe": "MoE"}  # how an arm is named at the start of a verdict sentence


# ------------------------------------------------------------------------------------------------ the items
@dataclass(frozen=True)
class _Task:
    """One task of the aligned item list: its group, metric and the positions of its items."""

    group: str
    metric: str
    index: np.ndarray  # (n_t,) positions in the reference item order


@dataclass(frozen=True)
class _Arm:
    """One arm's per-seed item statistics, aligned to the reference item order.

    ``stats[task]`` is ``(correct,)`` for accuracy tasks or ``(errors, words)`` for WER tasks, each ``(S, n_t)``.
    """

    seeds: list[Any]
    stats: dict[str, tuple[np.ndarray, ...]]


def report_items(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-item scores of an eval report: its ``items``, or (reports written before items existed) items
    recomputed from its ``predictions`` with :func:`audiomoe.evaluation.runner.score_items`."""
    if "items" in report:
        return list(report["items"])
    predictions = report.get("predictions")
    if not predictions or not all(
        isinstance(p, Mapping) and "task" in p and "answer" in p for p in predictions
    ):
        raise ValueError(
            "report has no per-item scores ('items') and no manifest 'predictions' (key, task, prediction, "
            "answer) to rebuild them from; evaluate with `audiomoe eval --manifest ... --json`"
        )
    # runner pulls in torch; only this old-report path needs it
    from audiomoe.evaluation.runner import score_items

    return score_items(
        [p["key"] for p in predictions],
        [p["task"] for p in predictions],
        [p["prediction"] for p in predictions],
        [p["answer"] for p in predictions],
    )


def _where(arm: str, seed: Any, report: Mapping[str, Any]) -> str:
    source = f" ({report['source']})" if "source" in report else ""
    return f"arm {arm!r} seed {seed}{source}"


def _identities(items: Sequence[Mapping[str, Any]], where: str) -> list[tuple[str, str]]:
    ids = [(str(it["task"]), str(it["key"])) for it in items]
    if len(set(ids)) != len(ids):
        twice = next(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"{where}: item key {twice[1]!r} of task {twice[0]!r} occurs more than once")
    return ids


def _layout(items: Sequence[Mapping[str, Any]], where: str) -> dict[str, _Task]:
    """Tasks (sorted by name, as in score_predictions) with their group, metric and item positions."""
    positions: dict[str, list[int]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    for i, it in enumerate(items):
        positions[it["task"]].append(i)
        meta.setdefault(it["task"], (it["group"], it["metric"]))
    tasks = {}
    for name in sorted(positions):
        group, metric = meta[name]
        if metric not in ("accuracy", "wer"):
            raise ValueError(
                f"{where}: task {name!r} uses metric {metric!r}; compare handles accuracy and wer"
            )
        tasks[name] = _Task(group, metric, np.asarray(positions[name]))
    return tasks


def _align(
    arm: str,
    reports: Sequence[Mapping[str, Any]],
    ids: list[tuple[str, str]],
    tasks: dict[str, _Task],
    ref: str,
) -> _Arm:
    """Stack one arm's reports into per-task ``(S, n_t)`` arrays in the reference item order."""
    if not reports:
        raise ValueError(f"arm {arm!r} has no eval reports")
    seeds = [r.get("seed", i) for i, r in enumerate(reports)]
    if len(set(map(str, seeds))) != len(seeds):
        raise ValueError(f"arm {arm!r}: seed labels {seeds} repeat; give each report of an arm its own seed")
    # Sorted by seed label, so that seed s sits in the same row of every arm and one seed draw pairs them.
    order = sorted(range(len(seeds)), key=lambda i: _seed_key(seeds[i]))
    seeds, reports = [seeds[i] for i in order], [reports[i] for i in order]
    position = {identity: i for i, identity in enumerate(ids)}
    n = len(ids)
    correct, errors, words = (np.zeros((len(reports), n)) for _ in range(3))
    for s, (seed, report) in enumerate(zip(seeds, reports)):
        where = _where(arm, seed, report)
        items = report_items(report)
        mine = _identities(items, where)
        if set(mine) != set(position):
            missing = sorted(set(position) - set(mine))
            extra = sorted(set(mine) - set(position))
            raise ValueError(
                f"{where}: items differ from those of arm {ref!r}: {len(missing)} missing"
                + (f" (e.g. {missing[0][1]!r} of {missing[0][0]!r})" if missing else "")
                + f", {len(extra)} extra"
                + (f" (e.g. {extra[0][1]!r} of {extra[0][0]!r})" if extra else "")
                + "; evaluate every arm and seed on the same manifest (and the same --limit)"
            )
        order = np.asarray([position[i] for i in mine])
        for it, i in zip(items, order):
            task = tasks[it["task"]]
            if it["metric"] != task.metric:
                raise ValueError(
                    f"{where}: task {it['task']!r} scored with {it['metric']!r}, not {task.metric!r}"
                )
            if task.metric == "wer":
                errors[s, i], words[s, i] = it["errors"], it["words"]
            else:
                correct[s, i] = it["correct"]
    stats = {
        name: (errors[:, t.index], words[:, t.index]) if t.metric == "wer" else (correct[:, t.index],)
        for name, t in tasks.items()
    }
    return _Arm(seeds, stats)


# -------------------------------------------------------------------------------------------- the bootstrap
def _task_scores(metric: str, stats: tuple[np.ndarray, ...], weights: np.ndarray) -> np.ndarray:
    """Task score per resample and seed, ``(R, S)``, from item weights ``(R, n_t)`` and stats ``(S, n_t)``."""
    if metric == "wer":
        errors, words = stats
        with np.errstate(invalid="ignore", divide="ignore"):  # no words drawn: NaN, left out of intervals
            wer = (weights @ errors.T) / (weights @ words.T)
        return np.maximum(0.0, 1.0 - wer)
    (correct,) = stats
    return (weights @ correct.T) / weights.shape[1]


def _aggregate(
    tasks: dict[str, _Task], arm: _Arm, item_weights: Mapping[str, np.ndarray], seed_weights: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Task, group and overall values ``(R,)`` of one arm for ``R`` resamples.

    item_weights: per task ``(R, n_t)``; seed_weights: ``(R, S)`` rows summing to 1 (a mean over drawn seeds).
    """
    values: dict[str, dict[str, np.ndarray]] = {"tasks": {}, "groups": {}, "overall": {}}
    by_group: dict[str, list[np.ndarray]] = defaultdict(list)
    for name, task in tasks.items():
        per_seed = _task_scores(task.metric, arm.stats[name], item_weights[name])  # (R, S)
        values["tasks"][name] = (per_seed * seed_weights).sum(axis=1)
        by_group[task.group].append(values["tasks"][name])
    for group in sorted(by_group):
        values["groups"][group] = np.mean(by_group[group], axis=0)
    values["overall"]["overall"] = np.mean(list(values["groups"].values()), axis=0)
    return values


def _per_seed(tasks: dict[str, _Task], arm: _Arm) -> dict[str, dict[str, np.ndarray]]:
    """Each seed's own task / group / overall scores ``(S,)``, i.e. what that seed's report says: S "resamples"
    that draw every item once and seed s alone."""
    S = len(arm.seeds)
    return _aggregate(tasks, arm, {name: np.ones((S, len(t.index))) for name, t in tasks.items()}, np.eye(S))


def _seed_weights(rng: np.random.Generator, n_seeds: int, resamples: int) -> np.ndarray:
    """``(B, S)``: how often each seed was drawn (with replacement), divided by ``S``."""
    if n_seeds == 1:
        return np.ones((resamples, 1))
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples) / n_seeds


def _item_weights(rng: np.random.Generator, tasks: dict[str, _Task], resamples: int) -> dict[str, np.ndarray]:
    """Per task ``(B, n_t)``: how often each item was drawn (``n_t`` draws with replacement per resample)."""
    draws = {name: len(t.index) for name, t in tasks.items()}
    return {
        name: rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
        for name, n in draws.items()
    }


def _interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    if np.all(np.isnan(boot)):
        return float("nan"), float("nan")
    low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _p_value(boot: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "difference = 0": twice the smaller tail of the resampled differences
    beyond 0, with the +1 correction that keeps it above 0 at a finite number of resamples."""
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return float("nan")
    below = (1 + np.count_nonzero(boot <= 0)) / (boot.size + 1)
    above = (1 + np.count_nonzero(boot >= 0)) / (boot.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def _std(boot: np.ndarray) -> float:
    boot = boot[~np.isnan(boot)]
    return float(np.std(boot, ddof=1)) if boot.size > 1 else float("nan")


# ------------------------------------------------------------------------------------------------ compare
def compare(
    arms: Mapping[str, Sequence[Mapping[str, Any]]],
    reference: str = "moe",
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    power: float = 0.8,
    paired: bool = True,
) -> dict[str, Any]:
    """Mean, interval, paired difference to ``reference``, p-value and detectable difference of every arm.

    Args:
        arms: arm name -> its eval reports (one per training seed; each with ``items``, or ``predictions`` to
            rebuild them from), all on the same items. A report's ``seed`` key labels it (else its position);
            ``source`` (a file name), when present, is named in errors.
        reference: the arm every other arm is compared with (differences are reference - other).
        resamples: bootstrap resamples ``B``.
        seed: seed of the bootstrap's random draws (the result is a function of the inputs and this seed).
        confidence: level of every interval; the p-value threshold of a verdict is ``1 - confidence``.
        power: power of the detectable difference.
        paired: draw items (and seeds) once for all arms (the default); False draws them per arm, as if the arms
            had been scored on different items; only useful to show what pairing buys.

    Returns:
        JSON-able dict: ``reference``, ``n_items``, ``tasks`` ({task: {group, metric, n}}), ``groups`` ({group:
        [tasks]}), ``arms`` ({arm: {seeds, tasks|groups|overall: {name: {mean, low, high, se, per_seed}}}}),
        ``differences`` ({other: {tasks|groups|overall: {name: {difference, low, high, se, p, detectable}}}}),
        ``verdicts`` ([{arm, scope, name, direction, sentence}] per group and overall), ``chance`` (see
        :func:`chance_levels`), ``best_vs_chance``, ``method`` and ``notes``.
    """
    if reference not in arms:
        raise ValueError(
            f"reference arm {reference!r} is not among the arms {sorted(arms)}; choose one of them"
        )
    if not 0 < confidence < 1 or not 0 < power < 1:
        raise ValueError(f"confidence ({confidence}) and power ({power}) must lie strictly between 0 and 1")
    if resamples < 10:
        raise ValueError(f"resamples={resamples}: use at least 10 (2000 for intervals to report)")
    ref_reports = arms[reference]
    if not ref_reports:
        raise ValueError(f"arm {reference!r} has no eval reports")
    first = report_items(ref_reports[0])
    where = _where(reference, ref_reports[0].get("seed", 0), ref_reports[0])
    ids = _identities(first, where)
    if not ids:
        raise ValueError(f"{where}: the report has no items")
    tasks = _layout(first, where)
    names = [reference] + sorted(a for a in arms if a != reference)
    aligned = {a: _align(a, arms[a], ids, tasks, reference) for a in names}
    seed_lists = {a: [str(s) for s in aligned[a].seeds] for a in names}
    seeds_paired = paired and len({tuple(v) for v in seed_lists.values()}) == 1

    rng = np.random.default_rng(seed)
    shared_items = _item_weights(rng, tasks, resamples) if paired else None
    shared_seeds = _seed_weights(rng, len(aligned[reference].seeds), resamples) if seeds_paired else None
    boot, per_seed = {}, {}  # {arm: {scope: {name: (B,)}}}, {arm: {scope: {name: (S,)}}}
    for a in names:
        arm = aligned[a]
        items = shared_items if shared_items is not None else _item_weights(rng, tasks, resamples)
        seeds = shared_seeds if shared_seeds is not None else _seed_weights(rng, len(arm.seeds), resamples)
        boot[a] = _aggregate(tasks, arm, items, seeds)
        per_seed[a] = _per_seed(tasks, arm)
    # The point estimate is the mean over seeds of each seed's score (scores are linear in the seed weights).
    point = {
        a: {sc: {n: float(v.mean()) for n, v in d.items()} for sc, d in per_seed[a].items()} for a in names
    }

    def summary(a: str, scope: str, name: str) -> dict[str, Any]:
        low, high = _interval(boot[a][scope][name], confidence)
        return {
            "mean": point[a][scope][name],
            "low": low,
            "high": high,
            "se": _std(boot[a][scope][name]),
            "per_seed": [float(v) for v in per_seed[a][scope][name]],
        }

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2) + NormalDist().inv_cdf(power)

    def difference(other: str, scope: str, name: str) -> dict[str, Any]:
        delta = boot[reference][scope][name] - boot[other][scope][name]
        low, high = _interval(delta, confidence)
        se = _std(delta)
        return {
            "difference": point[reference][scope][name] - point[other][scope][name],
            "low": low,
            "high": high,
            "se": se,
            "p": _p_value(delta),
            "detectable": z * se,
        }

    result: dict[str, Any] = {
        "reference": reference,
        "n_items": len(ids),
        "tasks": {
            name: {"group": t.group, "metric": t.metric, "n": len(t.index)} for name, t in tasks.items()
        },
        "groups": {
            g: [n for n, t in tasks.items() if t.group == g]
            for g in sorted({t.group for t in tasks.values()})
        },
        "arms": {
            a: {"seeds": aligned[a].seeds} | {s: {n: summary(a, s, n) for n in point[a][s]} for s in SCOPES}
            for a in names
        },
        "differences": {
            o: {s: {n: difference(o, s, n) for n in point[o][s]} for s in SCOPES}
            for o in names
            if o != reference
        },
    }
    result["verdicts"] = verdicts(result, confidence)
    result["chance"] = chance_levels(_chance_source(ref_reports[0], first))
    result["best_vs_chance"] = best_vs_chance(result)
    one_seed = [a for a in names if len(aligned[a].seeds) == 1]
    resampled = {a: len(aligned[a].seeds) > 1 for a in names}
    result["method"] = _method(resamples, seed, confidence, power, paired, seeds_paired, z, resampled)
    notes = []
    if one_seed:
        notes.append(
            f"{', '.join(one_seed)}: one seed, so {'its' if len(one_seed) == 1 else 'their'} intervals resample "
            "test items only and leave out seed-to-seed variation; train >= 3 seeds for a claim about the arm"
        )
    if paired and not seeds_paired and len(names) > 1:
        notes.append(
            f"arms carry different seed labels {seed_lists}: seeds are drawn per arm (items stay paired)"
        )
    result["notes"] = notes
    return result


def _seed_key(label: Any) -> tuple[int, Any]:
    try:
        return 0, int(label)
    except (TypeError, ValueError):
        return 1, str(label)


def _chance_source(report: Mapping[str, Any], items: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
    """Predictions carry answers (needed for the majority rate of open tasks); items are the fallback."""
    predictions = report.get("predictions")
    if predictions and all(isinstance(p, Mapping) and "task" in p and "answer" in p for p in predictions):
        return list(predictions)
    return items


def _method(
    resamples: int, seed: int, confidence: float, power: float, paired: bool, seeds_paired: bool, z: float,
    seeds_resampled: dict[str, bool],
) -> dict[str, Any]:  # fmt: skip
    alpha = 1 - confidence
    pct = _pct(confidence)
    items = "the same draw for every arm, so comparisons are paired" if paired else "drawn per arm"
    if not any(seeds_resampled.values()):
        seeds = "one seed per arm, so seeds are not resampled"
    else:
        how = "the same draw for every arm" if seeds_paired else "per arm"
        if not all(seeds_resampled.values()):
            how += "; arms with one seed keep it"
        seeds = f"training seeds drawn with replacement ({how})"
    return {
        "interval": (
            f"{pct}% percentile bootstrap, {resamples} resamples: test items drawn with replacement within each "
            f"task ({items}) and {seeds}; each resample recomputes the "
            "scores as score_predictions does (accuracy = mean of correct; WER = sum errors / sum words, score "
            "max(0, 1 - WER), per seed; group = mean of its tasks; overall = mean of groups) and averages them "
            "over the drawn seeds"
        ),
        "p_value": (
            "two-sided paired bootstrap p-value from the same resamples: 2 * min((1 + #{d* <= 0}) / (B + 1), "
            "(1 + #{d* >= 0}) / (B + 1)), at most 1, where d* = reference - other in a resample"
        ),
        "detectable": (
            f"minimum detectable difference = (z_(1-alpha/2) + z_power) * bootstrap SE of the difference = "
            f"{z:.3f} * SE (alpha = {alpha:.2g}, power = {power:.2g}): the true difference a two-sided test at "
            "that level detects with that power, at this number of items and seeds"
        ),
        "verdict": (
            f"better / worse where the {pct}% interval of reference - other excludes 0; otherwise no difference "
            "detectable, with the detectable difference"
        ),
        "resamples": resamples,
        "seed": seed,
        "confidence": confidence,
        "power": power,
        "paired": paired,
        "seeds_paired": seeds_paired,
        "seeds_resampled": seeds_resampled,
    }


# ------------------------------------------------------------------------------------------------ verdicts
def _signed(x: float, digits: int = 3) -> str:
    """``+0.071`` / ``−0.010`` (a true minus sign, as in print)."""
    return "nan" if math.isnan(x) else f"{x:+.{digits}f}".replace("-", "\u2212")


def _p_text(p: float) -> str:
    return "p=nan" if math.isnan(p) else "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _pct(confidence: float) -> str:
    return f"{100 * confidence:g}"


def verdicts(result: Mapping[str, Any], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One sentence per other arm and per group and overall, from the intervals of ``result["differences"]``:
    "better" / "worse" only where the interval of reference - other excludes 0."""
    ref = result["reference"]
    out = []
    for other, diffs in result["differences"].items():
        for scope in ("groups", "overall"):
            for name, d in diffs[scope].items():
                where = "overall" if scope == "overall" else f"on {name}"
                ci = f"{_pct(confidence)}% CI {_signed(d['low'])}..{_signed(d['high'])}"
                if d["low"] > 0 or d["high"] < 0:
                    direction = "better" if d["low"] > 0 else "worse"
                    subject = _DISPLAY.get(ref, ref)
                    sentence = (
                        f"{subject} {direction} than {other} {where} ({_signed(d['difference'])}, {ci}, "
                        f"{_p_text(d['p'])})"
                    )
                else:
                    direction = "none"
                    sentence = (
                        f"no difference detectable at this scale between {ref} and {other} {where} "
                        f"({_signed(d['difference'])}, {ci}; detectable \u2265 {d['detectable']:.3f})"
                    )
                scope_name = scope.rstrip("s")
                out.append(
                    {
                        "arm": other,
                        "scope": scope_name,
                        "name": name,
                        "direction": direction,
                        "sentence": sentence,
                    }
                )
    return out


# -------------------------------------------------------------------------------------------------- chance
def chance_levels(records_or_items: Sequence[Any]) -> dict[str, Any]:
    """Score of guessing, per task, group (mean of its tasks, as group scores are) and overall.

    records_or_items: :class:`~audiomoe.data.manifest.AudioRecord` objects or dicts with ``task`` (and, for open
    tasks, ``answer``: report ``predictions`` have it, report ``items`` do not).

    Rules: an accuracy task with a closed label set in the registry: 1 / number of labels (a uniform guess);
    an open accuracy task: the majority-class rate of its normalised answers (always giving the most common
    answer), or None where no answers are given; a WER task: 0 (1 - WER of a guess is 0: max(0, 1 - WER) clips).
    A group's chance is the mean over its tasks (as its score is), None where one of them is unknown.

    Returns: ``{"tasks": {task: float | None}, "rules": {task: str}, "groups": {group: float | None},
    "overall": float | None}``.
    """
    answers: dict[str, list[str]] = {}
    for entry in records_or_items:
        task = entry["task"] if isinstance(entry, Mapping) else entry.task
        answer = entry.get("answer") if isinstance(entry, Mapping) else getattr(entry, "answer", None)
        answers.setdefault(task, [])
        if answer is not None:
            answers[task].append(str(answer))
    tasks: dict[str, float | None] = {}
    rules: dict[str, str] = {}
    by_group: dict[str, list[float | None]] = defaultdict(list)
    for name in sorted(answers):
        task = get_task(name)
        if task.metric == "wer":
            tasks[name], rules[name] = 0.0, "WER task: 1 - WER of a guess is 0"
        elif task.labels:
            tasks[name], rules[name] = 1.0 / len(task.labels), f"1/{len(task.labels)} closed labels"
        elif answers[name]:
            counts = Counter(task.normalize(a) for a in answers[name])
            tasks[name] = counts.most_common(1)[0][1] / len(answers[name])
            rules[name] = "majority-class rate of the answers"
        else:
            tasks[name], rules[name] = None, "unknown: open answers and no answers given"
        by_group[task.group].append(tasks[name])
    # A group (and overall) is known only where all of its tasks are: a mean over some would mislead.
    groups = {g: None if None in v else float(np.mean(v)) for g, v in sorted(by_group.items())}
    overall = None if None in groups.values() or not groups else float(np.mean(list(groups.values())))
    return {"tasks": tasks, "rules": rules, "groups": groups, "overall": overall}


def best_vs_chance(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per group and overall: the best arm by mean, its mean, the chance level and their ratio (None where chance
    is unknown or 0). A reader's first check: is the best arm well above chance (e.g. >= 2x) everywhere?"""
    chance = result.get("chance") or {}
    out = {}
    for scope, names in (("groups", list(result["groups"])), ("overall", ["overall"])):
        for name in names:
            means = {a: v[scope][name]["mean"] for a, v in result["arms"].items()}
            best = max(means, key=lambda a: -math.inf if math.isnan(means[a]) else means[a])
            level = chance.get("overall") if scope == "overall" else (chance.get("groups") or {}).get(name)
            ratio = means[best] / level if level else None
            out[name] = {"arm": best, "mean": means[best], "chance": level, "ratio": ratio}
    return out


# ------------------------------------------------------------------------------------------------ markdown
def _cell(v: Mapping[str, float]) -> str:
    return f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def comparison_markdown(result: Mapping[str, Any], title: str = "Comparison of arms") -> list[str]:
    """Lines of markdown: arm x group table (mean [low, high]), chance row, paired differences (with CI, p and
    detectable difference), verdicts, method and notes."""
    ref, method = result["reference"], result["method"]
    pct = _pct(method["confidence"])
    groups = list(result["groups"])
    seeds = ", ".join(f"{a} {len(v['seeds'])}" for a, v in result["arms"].items())
    lines = [
        f"## {title} (reference: {ref})",
        "",
        f"{result['n_items']} items in {len(result['tasks'])} task(s); seeds per arm: {seeds}; "
        f"{method['resamples']} bootstrap resamples; mean over seeds [{pct}% interval].",
        "",
        "| arm | seeds | " + " | ".join(groups) + " | overall |",
        "|---|---|" + "---|" * (len(groups) + 1),
    ]
    for arm, v in result["arms"].items():
        cells = [_cell(v["groups"][g]) for g in groups] + [_cell(v["overall"]["overall"])]
        lines.append(f"| {arm} | {len(v['seeds'])} | " + " | ".join(cells) + " |")
    chance = result.get("chance")
    if chance:
        levels = [chance["groups"].get(g) for g in groups] + [chance["overall"]]
        lines.append("| chance | | " + " | ".join("?" if c is None else f"{c:.3f}" for c in levels) + " |")
    if result["differences"]:
        lines += [
            "",
            f"Paired differences ({ref} \u2212 other; {pct}% interval, two-sided p, detectable difference at "
            f"{method['power']:.0%} power)",
            "",
            "| other | scope | difference | interval | p | detectable |",
            "|---|---|---|---|---|---|",
        ]
        for other, diffs in result["differences"].items():
            for scope in ("groups", "overall"):
                for name, d in diffs[scope].items():
                    interval = f"{_signed(d['low'])}..{_signed(d['high'])}"
                    p = _p_text(d["p"]).removeprefix("p=")
                    lines.append(
                        f"| {other} | {name} | {_signed(d['difference'])} | {interval} | {p} | {d['detectable']:.3f} |"
                    )
        lines += ["", "Verdicts", ""] + [f"- {v['sentence']}" for v in result["verdicts"]]
    lines += [
        "",
        f"Method: {method['interval']}. p: {method['p_value']}. Detectable: {method['detectable']}.",
    ]
    lines += [f"Note: {n}" for n in result["notes"]]
    return lines
