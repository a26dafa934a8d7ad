"""The siblings report: the three comparisons as tables with intervals, CORD's gap reduction and retention."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from audiomoe.evaluation.stats import comparison_markdown
from audiomoe.recipes.demo.report import machine_line


def _text_score(evals: list[dict[str, Any]]) -> float | None:
    """Mean over seeds of the mean text-prompt score over the semantic tasks of ``eval --modality-gap``."""
    per_seed = [fmean(g["text"] for g in e["modality_gap"].values()) for e in evals if e.get("modality_gap")]
    return fmean(per_seed) if per_seed else None


def _text_scores_by_task(evals: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over seeds of each semantic task's text-prompt score."""
    tasks = sorted({t for e in evals for t in e.get("modality_gap") or {}})
    return {t: fmean(e["modality_gap"][t]["text"] for e in evals if t in (e.get("modality_gap") or {}))
            for t in tasks}  # fmt: skip


def distillation_summary(
    base_evals: list[dict[str, Any]], versus_base: dict[str, Any], arms: tuple[str, ...], base: str
) -> dict[str, Any]:
    """Gap before / after and gap reduction as CORD's paper defines them (text score of the *starting* model −
    audio score; reduction = (gap_before − gap_after) / gap_before), each method's semantic audio score and its
    paired difference to the start with the interval (the reduction's interval is the difference's divided by
    gap_before: the starting text score is held fixed, as the paper's table does), and every other group's
    difference to the start (retention)."""
    text = _text_score(base_evals)
    start = versus_base["arms"][base]["groups"]["semantic"]["mean"]
    gap_before = None if text is None else text - start
    out: dict[str, Any] = {"start": base, "text_start": text, "audio_start": start, "gap_before": gap_before,
                           "methods": {}}  # fmt: skip
    # per semantic task: the start's text and audio scores and each method's audio score (means over seeds)
    out["tasks"] = {
        task: {"text_start": score, "audio": {a: versus_base["arms"][a]["tasks"][task]["mean"] for a in (base, *arms)
                                              if task in versus_base["arms"][a].get("tasks", {})}}
        for task, score in _text_scores_by_task(base_evals).items()
    }  # fmt: skip
    for arm in arms:
        diffs = versus_base["differences"][arm]
        gain = diffs["groups"]["semantic"]
        audio = versus_base["arms"][arm]["groups"]["semantic"]
        entry: dict[str, Any] = {
            "audio": audio,
            # compare() gives reference − other; here method − start
            "audio_gain": {
                "difference": -gain["difference"],
                "low": -gain["high"],
                "high": -gain["low"],
                "p": gain["p"],
                "detectable": gain["detectable"],
            },  # fmt: skip
            "retention": {
                g: {"difference": -d["difference"], "low": -d["high"], "high": -d["low"], "p": d["p"]}
                for g, d in diffs["groups"].items()
                if g != "semantic"
            },  # fmt: skip
        }
        if gap_before is not None and gap_before > 0:
            entry["gap_after"] = text - audio["mean"]
            entry["gap_reduction_pct"] = {k: 100 * entry["audio_gain"][k] / gap_before for k in ("difference", "low",
                                                                                                 "high")}  # fmt: skip
        out["methods"][arm] = entry
    return out


def _ci(v: dict[str, float], key: str = "difference", spec: str = "+.3f") -> str:
    return f"{v[key]:{spec}} [{v['low']:{spec}}, {v['high']:{spec}}]"


def render_markdown(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    lines = [
        "# The seed's sibling methods, measured (toy scale)",
        "",
        f"Machine: {machine_line(report)}. Wall time {report['wall_seconds'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in report['timings'].items())}). Seeds {seeds}.",
        "",
        "## Adapters (matched active parameters)",
        "",
        "| arm | total | active | pool | virtual width | routing paths |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in report["adapters"].items():
        lines.append(f"| {name} | {a['total_params']:,} | {a['active_params']:,} | {a.get('pool_size', '–')} | "
                     f"{a.get('virtual_width', '–')} | {a.get('routing_paths', '–')} |")  # fmt: skip
    lines += [""] + comparison_markdown(
        report["architecture"], "MoUE-style vs per-block MoE vs single-layer MoE vs dense"
    )
    lines += [""] + comparison_markdown(
        report["upcycling"], "Upcycled (dense half, MoE half) vs from-scratch MoE"
    )
    summary = report["distillation_summary"]
    lines += ["", "## CORD vs forward KL vs SFT (from each seed's moe model after the text-path stage)", ""]
    if summary["gap_before"] is None or summary["gap_before"] <= 0:
        lines.append("The starting model's text path is not better than its audio path: no gap to reduce.")
    else:
        lines += [
            f"Start: semantic text score {summary['text_start']:.3f}, audio {summary['audio_start']:.3f}, gap "
            f"{summary['gap_before']:.3f} (text − audio).",
            "",
            "| method | semantic audio | gain vs start [95% CI] | gap after | gap reduction % [95% CI] | p |",
            "|---|---|---|---|---|---|",
        ]
        for arm, m in summary["methods"].items():
            r = m.get("gap_reduction_pct")
            lines.append(
                f"| {arm} | {m['audio']['mean']:.3f} | {_ci(m['audio_gain'])} | {m.get('gap_after', float('nan')):.3f} "
                f"| {_ci(r, spec='+.1f') if r else '–'} | {m['audio_gain']['p']:.3f} |"
            )
        arms = list(summary["methods"])
        lines += ["", "Per semantic task (means over seeds): the start's text score, then audio scores:", "",
                  "| task | text (start) | audio (start) | " + " | ".join(arms) + " |",
                  "|---|---|---|" + "---|" * len(arms)]  # fmt: skip
        for task, t in summary.get("tasks", {}).items():
            cells = [f"{t['audio'][a]:.3f}" if a in t["audio"] else "–" for a in (summary["start"], *arms)]
            lines.append(f"| {task} | {t['text_start']:.3f} | " + " | ".join(cells) + " |")
        groups = sorted({g for m in summary["methods"].values() for g in m["retention"]})
        lines += ["", "Retention (method − start, 95% CI):", "", "| method | " + " | ".join(groups) + " |",
                  "|---|" + "---|" * len(groups)]  # fmt: skip
        for arm, m in summary["methods"].items():
            lines.append(f"| {arm} | " + " | ".join(_ci(m["retention"][g]) for g in groups) + " |")
    lines += [""] + comparison_markdown(report["distillation"], "Distillation arms, all groups")
    return "\n".join(lines) + "\n"
