"""Post-hoc analysis of the trained arms on held-out clips (gradient conflict, routing, balance) and its section
of the report. One seed's models are analysed (seed 0): the analysis describes trained adapters, the seed
statistics are the evaluation's."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from audiomoe.analysis.gradients import WHOLE
from audiomoe.analysis.report import AnalysisConfig, Collate, analyze_checkpoints
from audiomoe.data.manifest import AudioRecord
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.recipes.demo.claims import (
    PAPER_CELL_BAND,
    PAPER_COSINES,
    PAPER_INFLUENCE,
    pair_title,
    paper_claims,
)

# 8 probe batches of 8 clips per category / task group and routing over up to 512 clips: about 25 s for four arms.
ANALYSIS = AnalysisConfig(probe_batches=8, probe_batch_size=8, max_routing_items=512, batch_size=16)
# Both held out from training; together they give the full demo 8 probe batches of each category.
ANALYSIS_SPLITS = ("dev", "test")
BALANCE_KEYS = ("cv", "max_over_mean", "dead_experts", "load_entropy_normalized", "router_entropy_normalized")


def cached_loader(
    cache_dir: Path, records: Sequence[AudioRecord]
) -> Callable[[str | Path], tuple[nn.Module, Collate]]:
    """A checkpoint loader for :func:`analyze_checkpoints` whose batches read the demo's frozen-encoder
    feature cache (the encoder is frozen in every arm, so its outputs are computed once and shared)."""

    def load(checkpoint: str | Path) -> tuple[nn.Module, Collate]:
        model = AudioLanguageModel.from_pretrained(checkpoint)
        cache = FeatureCache(cache_dir, model)
        cache.ensure([r.audio for r in records], progress=False)
        batcher = RecordBatcher(records, model.processor, cache=cache)
        return model, lambda chunk: batcher.batch(chunk, [r.instruction for r in chunk])

    return load


def analyze_arms(
    arms: dict[str, Any], records: Sequence[AudioRecord], cache_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Gradient conflict, routing and balance of every trained arm on ``records``; plots and ``analysis.json``
    go to ``out_dir``. Returns the summary kept in ``report.json`` (plot paths relative to the report)."""
    started = time.perf_counter()
    result = analyze_checkpoints(
        [a["model_dir"] for a in arms.values()], records, out_dir, labels=list(arms), config=ANALYSIS,
        loader=cached_loader(cache_dir, records),
    )  # fmt: skip
    summary = analysis_summary(result, dense=[n for n in arms if n != "moe"])
    summary.update(
        records=len(records),
        splits=list(ANALYSIS_SPLITS),
        seconds=round(time.perf_counter() - started, 1),
        plots={name: f"{out_dir.name}/{file}" for name, file in result["plots"].items()},
    )
    return summary


def analysis_summary(result: dict[str, Any], dense: list[str], moe: str = "moe") -> dict[str, Any]:
    """The numbers the report shows, from an ``analysis.json`` dict, and the paper's claims checked on them.

    dense: labels of the dense arms the MoE (label ``moe``) is compared with."""
    routing = {label: m["routing"] for label, m in result["models"].items() if m["routing"]}
    nmi = {
        label: {
            attr: {
                "nmi": value,
                "chance": r["nmi_chance"][attr],
                "coverage": _coverage(r["activation"][attr]),
            }
            for attr, value in r["nmi"].items()
        }
        for label, r in routing.items()
    }
    balance = {label: {k: r["balance"][k] for k in BALANCE_KEYS} for label, r in routing.items()}
    for label, r in routing.items():
        cells = _category_cells(r["activation"].get("category"))
        if cells:
            balance[label]["category_cells"] = cells
    summary = {
        "conflict_ratio": result["conflict_ratio"],
        "conflict_ratio_task_group": result["conflict_ratio_task_group"],
        "mean_cosine": result["mean_cosine"].get("category", {}),
        "influence": result["influence"],
        "probe_batches": {label: _probe_batches(m) for label, m in result["models"].items()},
        "nmi": nmi,
        "balance": balance,
        "paper": {"mean_cosine": PAPER_COSINES, "influence": PAPER_INFLUENCE},
        "config": result["config"],
    }
    summary["claims"] = paper_claims(summary, dense, moe)
    return summary


def _category_cells(table: dict[str, Any] | None) -> dict[str, float] | None:
    """Range of the speech / sound / music x expert activation rates and the share inside the paper's band."""
    rows = (
        []
        if table is None
        else [r for v, r in zip(table["values"], table["rates"]) if v in ANALYSIS.categories]
    )
    cells = [x for row in rows for x in row]
    if not cells:
        return None
    low, high = (bound * table["uniform"] for bound in PAPER_CELL_BAND)
    return {
        "min": min(cells),
        "max": max(cells),
        "uniform": table["uniform"],
        "share_in_paper_band": round(sum(low <= x <= high for x in cells) / len(cells), 3),
    }


def _probe_batches(model: dict[str, Any]) -> int | None:
    """Probe batches per audio category that entered one model's gradient report (None: not measured)."""
    report = model["gradients"].get("category")
    return report["selections"][WHOLE]["num_batches"] if report else None


def _coverage(activation: dict[str, Any]) -> float:
    """Share of routed frames whose clip has the attribute (missing values are ``"?"``)."""
    frames = dict(zip(activation["values"], activation["frames"]))
    total = sum(frames.values())
    return round(1 - frames.get("?", 0) / total, 3) if total else 0.0


def analysis_markdown(analysis: dict[str, Any], names: list[str], moe: str = "moe") -> list[str]:
    """The report's Analysis section: tables against the paper's figures, the claims checked, the plots."""
    order = [n for n in names if n != moe] + [moe]
    cfg = analysis["config"]
    header = ["| " + " | ".join(order) + " | paper dense | paper MoE |", "|---|" + "---|" * (len(order) + 2)]
    lines = [
        "",
        "## Analysis: gradient conflict, expert specialisation, balance",
        "",
        f"Measured on the trained arms with the {analysis['records']} held-out clips of "
        f"{' + '.join(analysis['splits'])} ({analysis['seconds']:.0f} s): gradients of the LM loss w.r.t. "
        f"each adapter's parameters on up to {cfg['probe_batches']} probe batches of "
        f"{cfg['probe_batch_size']} clips per audio category (speech / sound / music; mixtures left out) "
        f"and per task group (here {analysis['probe_batches'].get(moe)} batches per category), cosine "
        "averaged over batches; conflict ratio = share of negative (batch, pair) cosines; influence = "
        "1 − L_b(after one SGD step on a) / L_b(before). Every number: `analysis/analysis.json`.",
        "",
        "| gradient cosine " + header[0],
        header[1],
    ]
    for pair, (dense_ref, moe_ref) in PAPER_COSINES.items():
        cells = [_num(analysis["mean_cosine"].get(pair, {}).get(n), "+.3f") for n in order]
        lines.append(
            f"| {pair_title(pair)} | " + " | ".join(cells) + f" | {dense_ref:+.3f} | {moe_ref:+.3f} |"
        )
    for key, title in (
        ("conflict_ratio", "conflict ratio (categories)"),
        ("conflict_ratio_task_group", "conflict ratio (task groups)"),
    ):
        lines.append(
            f"| {title} | " + " | ".join(_num(analysis[key].get(n), ".2f") for n in order) + " | – | – |"
        )
    influence = analysis["influence"]
    if influence:
        lines += ["", "| influence of a speech update " + header[0], header[1]]
        for key, refs in PAPER_INFLUENCE.items():
            cells = [_num(influence.get(n, {}).get(key), "+.4f") for n in order]
            cells += [_num(r, "+.3f") for r in refs]
            lines.append(f"| {key.replace('->', ' → ')} | " + " | ".join(cells) + " |")
    nmi = analysis["nmi"].get(moe, {})
    if nmi:
        lines += [
            "",
            f"NMI between each frame's top-1 expert ({moe}) and each attribute, against the same after "
            "shuffling the attribute over frames (chance). Attributes that only some clips have "
            "(coverage < 1; the rest are `?`) also carry the audio category.",
            "",
            "| attribute | NMI | chance | × chance | coverage |",
            "|---|---|---|---|---|",
        ]
        for attr, v in sorted(nmi.items(), key=lambda kv: -kv[1]["nmi"]):
            times = f"{v['nmi'] / v['chance']:.0f}" if v["chance"] > 0 else "–"
            lines.append(f"| {attr} | {v['nmi']:.3f} | {v['chance']:.4f} | {times} | {v['coverage']:.2f} |")
    for label, b in analysis["balance"].items():
        cells = b.get("category_cells")
        lines += [
            "",
            f"Load balance ({label}): CV {_num(b['cv'], '.3f')}, max/mean {_num(b['max_over_mean'], '.2f')}, "
            f"dead experts {b['dead_experts'] or 'none'}, load entropy "
            f"{_num(b['load_entropy_normalized'], '.3f')} of the maximum, router entropy "
            f"{_num(b['router_entropy_normalized'], '.3f')} of the maximum"
            + (
                f"; category × expert activation {cells['min']:.0%}–{cells['max']:.0%} at a uniform "
                f"{cells['uniform']:.0%}."
                if cells
                else "."
            ),
        ]
    verdicts = {True: "**reproduces**", False: "**does not reproduce**", None: "not measured"}
    lines += ["", "### Does this run reproduce the paper's analysis claims?", ""]
    lines += [
        f"- {verdicts[c['reproduces']]}: {c['claim']}. Here: {c['here']}. Paper: {c['paper']}."
        for c in analysis["claims"]
    ]
    lines += [
        "",
        "Toy scale, the seed-0 models, a few probe batches: the cosines are of the paper's size (a few "
        "hundredths) and their sampling error is not measured, so a difference of a few hundredths in "
        "either direction is not evidence for or against the paper; routing figures (NMI against its "
        "chance level, balance) rest on every held-out frame and are firmer.",
        "",
    ]
    lines += [f"![{name}]({path})" for name, path in analysis["plots"].items()]
    return lines


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)
