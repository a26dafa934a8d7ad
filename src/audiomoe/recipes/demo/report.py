"""``report.md`` of a demo run: the machine, the arms, the statistics and verdicts, the competence bar, the
modality gap, the analysis against the paper, clip-length encoding and the run's cost."""

from __future__ import annotations

import math
from typing import Any

from audiomoe.evaluation.stats import comparison_markdown
from audiomoe.recipes.demo.analysis import analysis_markdown

# The bar the best arm must clear for differences between arms to mean something (see the README).
MAX_BEST_WER = 0.5
MIN_TIMES_CHANCE = 2.0
TRANSCRIBE = "transcribe"


def competence(comparison: dict[str, Any]) -> dict[str, Any]:
    """Is the best arm competent? Transcription WER (mean over seeds) <= 0.5 for the best arm at it, and in every
    task group the best arm at >= 2x the group's chance level."""
    groups = {
        name: {**row, "passes": row["ratio"] is not None and row["ratio"] >= MIN_TIMES_CHANCE}
        for name, row in comparison["best_vs_chance"].items()
        if name != "overall"
    }
    wer = None
    if TRANSCRIBE in comparison["tasks"]:
        # A task's score is max(0, 1 - WER); each seed's WER is 1 - score where the score is above 0.
        per_arm = {
            arm: sum(1 - s for s in v["tasks"][TRANSCRIBE]["per_seed"])
            / len(v["tasks"][TRANSCRIBE]["per_seed"])
            for arm, v in comparison["arms"].items()
        }
        best = min(per_arm, key=per_arm.get)
        wer = {"arm": best, "wer": per_arm[best], "passes": per_arm[best] <= MAX_BEST_WER, "by_arm": per_arm}
    passes = all(g["passes"] for g in groups.values()) and (wer is None or wer["passes"])
    return {"groups": groups, "transcription": wer, "passes": passes,
            "rule": f"best arm WER <= {MAX_BEST_WER}; best arm >= {MIN_TIMES_CHANCE:g}x chance in every group"}  # fmt: skip


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    cores = m.get("cores")
    cores = cores.get("usable") if isinstance(cores, dict) else cores
    return (
        f"{m.get('cpu_model')} {m.get('cpu_id', '')} ({m.get('cpu_capability')}, bf16 native: "
        f"{m.get('bf16_native')}), {cores} cores; torch {m.get('torch')}; precision {report['precision']}; "
        f"{report['workers']} worker process(es) x {report['threads_per_worker']} thread(s)"
    )


def render_markdown(report: dict[str, Any]) -> str:
    arms, comparison = report["arms"], report["comparison"]
    names = list(arms)
    settings, corpus, foundation = report["settings"], report["corpus"], report["foundation"]
    seeds = report["seeds"]
    lines = [
        "# audiomoe demo report",
        "",
        f"**Toy scale, {len(seeds)} seeds ({', '.join(map(str, seeds))})**, every figure a mean over seeds with a "
        "95% bootstrap interval over test items and seeds."
        + (" `--quick`: a smoke test of the pipeline, not a result." if report["quick"] else ""),
        "",
        f"Machine: {machine_line(report)}.",
        "",
        f"Corpus: {corpus['n']} clips ({'reused' if corpus['reused'] else 'built'}), "
        f"{corpus['test_items']} test items (held-out voices; held-out sentences made of words the training "
        f"sentences also use); {corpus['train_records']} training clips plus {corpus['asr_views']} ASR views "
        f"of their speech. Encoder `{settings['preset']}` frozen (cached features). {llm_sentence(foundation)} "
        f"Each arm trains end to end for {settings['steps']} steps of {settings['batch_size']} clips per seed.",
        "",
        "## Arms: parameters and cost",
        "",
        "| arm | adapter params total | active / token | train s (mean) | final loss (mean) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {a['params_total']:,} | {a['params_active']:,} | {a['train_seconds_mean']:.0f} | "
        f"{a['final_loss_mean']:.3f} |"
        for n, a in arms.items()
    ]
    lines += ["", *comparison_markdown(comparison, title="Test split: task groups and overall")]
    lines += ["", f"![forest plot]({comparison['forest_plot']})", ""]
    lines += competence_markdown(report["competence"])
    lines += ["", "## Test split: tasks (score: accuracy, or 1 − WER; mean [95% interval])", "",
              "| task | metric | n | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for task, meta in comparison["tasks"].items():
        cells = []
        for n in names:
            v = comparison["arms"][n]["tasks"][task]
            cells.append(f"{v['mean']:.3f} [{v['low']:.2f}, {v['high']:.2f}]")
        lines.append(f"| {task} | {meta['metric']} | {meta['n']} | " + " | ".join(cells) + " |")
    gap_rows = [(n, task, g) for n, a in arms.items() for task, g in a["modality_gap"].items()]
    if gap_rows:
        lines += ["", "## Modality gap (semantic tasks: audio − transcript-as-text, same items, mean over seeds)",
                  "", "| arm | task | audio | text | gap |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {n} | {t} | {g['audio']:.3f} | {g['text']:.3f} | {g['gap']:+.3f} |" for n, t, g in gap_rows
        ]
    if report.get("analysis"):
        lines += analysis_markdown(report["analysis"], names)
    lines += trim_markdown(report["trim_to_clip"])
    lines += [
        "",
        "## Run",
        "",
        f"Wall time {report['wall_seconds']:.0f} s, peak RSS {report['peak_rss_gib']} GiB (this process plus "
        f"{report['workers']} x the largest worker). Stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def llm_sentence(foundation: dict[str, Any]) -> str:
    if "pretrained" in foundation:
        return f"LLM: the preset's pretrained one (`{foundation['pretrained'].get('path')}`)."
    config = foundation["config"]
    return (
        f"LLM: Qwen2 {config['hidden_size']}x{config['num_hidden_layers']} with a {foundation['vocab_size']}-token "
        f"BPE learned on the corpus text ({foundation['params']:,} parameters), pretrained "
        f"{foundation['steps']} steps on that text."
    )


def competence_markdown(check: dict[str, Any]) -> list[str]:
    lines = [
        "## Are the arms competent?",
        "",
        f"Rule: {check['rule']}. Verdict: **{'yes' if check['passes'] else 'no'}**.",
        "",
        "| group | best arm | score | chance | × chance | ≥ 2× |",
        "|---|---|---|---|---|---|",
    ]
    for group, g in check["groups"].items():
        lines.append(
            f"| {group} | {g['arm']} | {g['mean']:.3f} | {_fmt(g['chance'])} | {_fmt(g['ratio'], '.1f')} | "
            f"{'yes' if g['passes'] else '**no**'} |"
        )
    wer = check["transcription"]
    if wer:
        by_arm = ", ".join(f"{a} {w:.3f}" for a, w in wer["by_arm"].items())
        lines += ["", f"Transcription WER (mean over seeds): {by_arm}; best {wer['arm']} {wer['wer']:.3f} "
                  f"({'meets' if wer['passes'] else '**misses**'} the ≤ {MAX_BEST_WER} bar)."]  # fmt: skip
    return lines


def trim_markdown(trim: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Clip-length encoding (trim_to_clip)",
        "",
        f"{trim['clips']} test clips of {trim['mean_clip_seconds']} s on average: encoding at the clip's own length "
        f"took {trim['seconds_trim']} s vs {trim['seconds_full']} s as full 30 s windows (**{trim['speedup']}×**). "
        f"Features differ: mean cosine {trim['mean_cosine']}, relative L2 {trim['mean_relative_l2']} (Whisper "
        "was trained on 30 s windows only). The seed-0 MoE arm, trained on clip-length features, scores "
        f"{_fmt(trim.get('score_trim'))} on these clips with them and {_fmt(trim.get('score_full_window'))} "
        "with full-window features (a train/test mismatch for the latter; training every arm on full windows "
        "would cost the speed-up above on all clips).",
    ]
