"""Analyse trained checkpoints side by side: gradient conflict, routing, plots and ``analysis.json``.

The pipeline for one model (:func:`analyze_model`) is generic: a model whose ``forward(**batch)`` returns
``.lm_loss`` and ``.adapter_output``, manifest records, and a ``collate(records) -> batch`` function.

1. Probe batches per audio category (``attributes["category"]``: speech / sound / music) and per task group
   (``TASKS[task].group``), a fixed seeded subset of the manifest, give the gradient-conflict reports.
2. Up to ``max_routing_items`` records run forward once; their routing gives activation rates, NMI per attribute
   (every clip attribute, plus ``task`` and ``task_group``) and load balance, and one clip per category is kept
   for the routing-over-time plot.

:func:`analyze_checkpoints` loads saved LALM directories, runs that for each, and :func:`write_report` writes the
plots and ``analysis.json`` comparing them (dense vs MoE side by side).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audiomoe.analysis import plots
from audiomoe.analysis.gradients import GradientReport, default_loss_fn, gradient_conflict
from audiomoe.analysis.routing import RoutingCollector, RoutingStats
from audiomoe.data.audio import load_audio
from audiomoe.data.manifest import AudioRecord, read_manifest
from audiomoe.data.tasks import TASKS
from audiomoe.models.directory import resolve_model_dir
from audiomoe.tensors import to_device

Collate = Callable[[Sequence[AudioRecord]], Mapping[str, Any]]
PROBE_KINDS = ("category", "task_group")
SAMPLING_RATE = 16000


@dataclass
class AnalysisConfig:
    """What :func:`analyze_model` measures and on how much data.

    categories: the audio categories compared by gradient conflict (the paper's three).
    probe_batches / probe_batch_size: probe batches per group (fewer when a group has fewer records).
    influence_lr: SGD step size of the look-ahead influence score; 0 skips it.
    max_routing_items / batch_size: records run forward for the routing statistics, and their batch size.
    clips_per_category: clips drawn with routing over their spectrogram, per category.
    influence_kinds: probe kinds that also get the influence score (``G x G`` extra forwards per batch).
    plot_attributes: attributes drawn as activation heat maps (NMI is reported for every attribute);
    max_plot_values: of those, ones with more distinct values than this are not drawn.
    """

    categories: tuple[str, ...] = ("speech", "sound", "music")
    probe_batches: int = 2
    probe_batch_size: int = 4
    influence_lr: float = 1e-2
    max_routing_items: int = 256
    batch_size: int = 8
    clips_per_category: int = 1
    influence_kinds: tuple[str, ...] = ("category",)
    plot_attributes: tuple[str, ...] = ("category", "task_group", "task", "gender")
    max_plot_values: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("probe_batches", "probe_batch_size", "max_routing_items", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"AnalysisConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.influence_lr < 0:
            raise ValueError(
                f"AnalysisConfig.influence_lr must be >= 0 (0 skips it), got {self.influence_lr}"
            )


@dataclass
class ClipRouting:
    """Routing of one clip's valid tokens: indices / weights ``(T', K)``."""

    key: str
    category: str
    audio: str
    expert_indices: np.ndarray
    expert_weights: np.ndarray | None


@dataclass
class ModelAnalysis:
    """Everything measured on one model; ``gradients[kind]`` is None when fewer than two groups had data."""

    label: str
    adapter_type: str
    gradients: dict[str, GradientReport | None]
    routing: RoutingStats | None
    clips: list[ClipRouting] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "adapter": self.adapter_type,
            "gradients": {k: (r.to_dict() if r else None) for k, r in self.gradients.items()},
            "routing": self.routing.to_dict() if self.routing is not None else None,
        }
        if self.notes:
            out["notes"] = self.notes
        return out


def record_attributes(record: AudioRecord) -> dict[str, str]:
    """Clip attributes plus the record's task and task group (what routing statistics are split by)."""
    task = TASKS.get(record.task)
    return {**record.attributes, "task": record.task, "task_group": task.group if task else "?"}


def _group_key(kind: str, record: AudioRecord) -> str | None:
    if kind == "category":
        return record.attributes.get("category")
    task = TASKS.get(record.task)
    return task.group if task else None


def probe_groups(
    records: Sequence[AudioRecord], kind: str, config: AnalysisConfig
) -> dict[str, list[list[AudioRecord]]]:
    """``{group: [batch of records, ...]}`` for probe kind ``category`` or ``task_group`` (seeded subset)."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind {kind!r} is unknown; choose one of {PROBE_KINDS}")
    by_group: dict[str, list[AudioRecord]] = {}
    for record in records:
        key = _group_key(kind, record)
        if key is not None and (kind != "category" or key in config.categories):
            by_group.setdefault(key, []).append(record)
    order = list(config.categories) if kind == "category" else sorted(by_group)
    rng = random.Random(config.seed)
    out: dict[str, list[list[AudioRecord]]] = {}
    for group in order:
        pool = list(by_group.get(group, []))
        if not pool:
            continue
        rng.shuffle(pool)
        size = config.probe_batch_size
        batches = [pool[i : i + size] for i in range(0, min(len(pool), size * config.probe_batches), size)]
        out[group] = batches
    return out


def make_probes(
    records: Sequence[AudioRecord],
    collate: Collate,
    kind: str = "category",
    config: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, list[dict[str, Any]]]:
    """Collated probe batches ``{group: [batch, ...]}`` for :func:`gradient_conflict` or a
    :class:`GradientConflictTracker` in a training loop (built once, reused at every measurement)."""
    config = config or AnalysisConfig()
    device = torch.device(device)
    return {
        g: [to_device(collate(b), device) for b in batches]
        for g, batches in probe_groups(records, kind, config).items()
    }


def analyze_model(
    model: nn.Module,
    records: Sequence[AudioRecord],
    collate: Collate,
    label: str,
    config: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
) -> ModelAnalysis:
    """Gradient conflict (per category and per task group) and routing statistics of one model."""
    config = config or AnalysisConfig()
    device = torch.device(device)
    model.to(device)
    if not records:
        raise ValueError("no records to analyse: is the manifest empty?")
    adapter = getattr(model, "adapter", model)
    analysis = ModelAnalysis(label, getattr(adapter, "registry_name", type(adapter).__name__), {}, None)

    for kind in PROBE_KINDS:
        probes = make_probes(records, collate, kind, config, device)
        if len(probes) < 2:
            analysis.gradients[kind] = None
            analysis.notes.append(f"gradients by {kind}: need records of two groups, found {sorted(probes)}")
            continue
        analysis.gradients[kind] = gradient_conflict(
            model,
            probes,
            default_loss_fn,
            influence_lr=(config.influence_lr or None) if kind in config.influence_kinds else None,
        )

    analysis.routing, analysis.clips = _routing(model, records, collate, config, device)
    return analysis


@torch.no_grad()
def _routing(
    model: nn.Module,
    records: Sequence[AudioRecord],
    collate: Collate,
    config: AnalysisConfig,
    device: torch.device,
) -> tuple[RoutingStats | None, list[ClipRouting]]:
    rng = random.Random(config.seed)
    sample = list(records)
    rng.shuffle(sample)
    sample = sample[: config.max_routing_items]
    wanted = _clip_keys(sample, config.clips_per_category)
    collector, clips = RoutingCollector(), []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sample), config.batch_size):
            chunk = sample[start : start + config.batch_size]
            out = model(**to_device(collate(chunk), device)).adapter_output
            if out is None:
                continue
            collector.add(out, [record_attributes(r) for r in chunk])
            if out.expert_indices is None:
                continue
            for i, r in enumerate(chunk):
                if r.key in wanted:
                    valid = out.mask[i].bool()
                    weights = (
                        None
                        if out.expert_weights is None
                        else out.expert_weights[i][valid].float().cpu().numpy()
                    )
                    clips.append(
                        ClipRouting(r.key, r.attributes.get("category", "?"), r.audio,
                                    out.expert_indices[i][valid].cpu().numpy(), weights)
                    )  # fmt: skip
    finally:
        model.train(was_training)
    return collector.stats(), clips


def _clip_keys(records: Sequence[AudioRecord], per_category: int) -> set[str]:
    """Keys of the first ``per_category`` records of each category (the clips drawn over their spectrogram)."""
    taken: dict[str, int] = {}
    keys = set()
    for r in records:
        category = r.attributes.get("category", "?")
        if taken.get(category, 0) < per_category:
            taken[category] = taken.get(category, 0) + 1
            keys.add(r.key)
    return keys


def _unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def write_report(
    analyses: Sequence[ModelAnalysis], out_dir: str | Path, config: AnalysisConfig | None = None
) -> dict[str, Any]:
    """Write the comparison plots and ``analysis.json`` into ``out_dir``; returns the JSON dict.

    Top-level keys: ``conflict_ratio`` ``{model: ratio}`` (categories, whole adapter), ``conflict_ratio_task_group``,
    ``mean_cosine`` ``{kind: {"a|b": {model: cos}}}``, ``influence`` ``{model: {"a->b": z}}``, ``nmi``
    ``{model: {attribute: nmi}}`` and ``balance`` ``{model: figures}`` for routed models, ``models`` (everything per
    model), ``plots`` (file names).
    """
    config = config or AnalysisConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def note(name: str, path: Path) -> None:
        written[name] = path.name

    for kind in PROBE_KINDS:
        reports = {a.label: a.gradients.get(kind) for a in analyses if a.gradients.get(kind) is not None}
        if reports:
            panels = {label: (r.groups, r.cosine) for label, r in reports.items()}
            note(
                f"cosine_{kind}", plots.plot_cosine_heatmaps(panels, out_dir / f"gradient_cosine_{kind}.png")
            )
            influence = {
                label: (r.groups, r.influence) for label, r in reports.items() if r.influence is not None
            }
            if influence:
                note(
                    f"influence_{kind}",
                    plots.plot_influence_heatmaps(influence, out_dir / f"influence_{kind}.png"),
                )

    routed = [a for a in analyses if a.routing is not None]
    for a in routed:
        for attr in [x for x in config.plot_attributes if x in a.routing.attributes]:
            table = a.routing.activation_rates(attr)
            if 1 < len(table.values) <= config.max_plot_values:  # speaker ids and the like get NMI only
                path = plots.plot_expert_activation(
                    {a.label: table}, out_dir / f"expert_activation_{a.label}_{attr}.png"
                )
                note(f"activation_{a.label}_{attr}", path)
        for clip in a.clips:
            wave = load_audio(clip.audio, SAMPLING_RATE)
            mel = plots.log_mel(wave, SAMPLING_RATE)
            path = plots.plot_routing_over_time(
                mel, len(wave) / SAMPLING_RATE, clip.expert_indices, a.routing.num_experts,
                out_dir / f"routing_{a.label}_{clip.category}_{_safe(clip.key)}.png", clip.expert_weights,
                title=f"{a.label}: {clip.category} clip {clip.key} (marker size: gate weight; line: top-1)",
            )  # fmt: skip
            note(f"routing_{a.label}_{clip.category}_{clip.key}", path)
    if routed:
        loads = {a.label: a.routing.balance().load for a in routed}
        note("load", plots.plot_load_bars(loads, out_dir / "expert_load.png"))

    result = _summary(analyses)
    result["plots"] = written
    result["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _summary(analyses: Sequence[ModelAnalysis]) -> dict[str, Any]:
    models = {a.label: a.to_dict() for a in analyses}
    result: dict[str, Any] = {
        "conflict_ratio": {},
        "conflict_ratio_task_group": {},
        "mean_cosine": {},
        "influence": {},
    }
    for a in analyses:
        for kind, key in (("category", "conflict_ratio"), ("task_group", "conflict_ratio_task_group")):
            report = models[a.label]["gradients"].get(kind)
            result[key][a.label] = report["conflict_ratio"] if report else None
            if report:
                for pair, cos in report["mean_cosine"].items():
                    result["mean_cosine"].setdefault(kind, {}).setdefault(pair, {})[a.label] = cos
        report = models[a.label]["gradients"].get("category")
        if report and "influence" in report:
            result["influence"][a.label] = report["influence"]
    result["nmi"] = {label: m["routing"]["nmi"] for label, m in models.items() if m["routing"]}
    result["balance"] = {label: m["routing"]["balance"] for label, m in models.items() if m["routing"]}
    result["models"] = models
    return result


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]


def load_lalm(checkpoint: str | Path) -> tuple[nn.Module, Collate]:
    """A saved LALM directory (or a training run directory holding ``model/``) -> (model, collate), where
    collate builds training batches (with answers) exactly as training does."""
    from audiomoe.models.batching import RecordBatcher
    from audiomoe.models.lalm import AudioLanguageModel

    model = AudioLanguageModel.from_pretrained(resolve_model_dir(checkpoint))

    def collate(records: Sequence[AudioRecord]) -> Mapping[str, Any]:
        return RecordBatcher(records, model.processor).batch(records, [r.instruction for r in records])

    return model, collate


def analyze_checkpoints(
    checkpoints: Sequence[str | Path],
    manifest: str | Path | Sequence[AudioRecord],
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
    config: AnalysisConfig | None = None,
    device: str | torch.device = "cpu",
    loader: Callable[[str | Path], tuple[nn.Module, Collate]] = load_lalm,
) -> dict[str, Any]:
    """Analyse saved model directories on a manifest and write plots + ``analysis.json`` to ``out_dir``.

    labels: one per checkpoint (default: the adapter type, e.g. ``linear`` / ``moe``, made unique).
    Returns the ``analysis.json`` dict; its ``plots`` maps plot names to PNG file names inside ``out_dir``.
    """
    config = config or AnalysisConfig()
    if not checkpoints:
        raise ValueError("give at least one --checkpoint directory")
    if labels is not None and len(labels) != len(checkpoints):
        raise ValueError(
            f"{len(labels)} labels for {len(checkpoints)} checkpoints; give one label per checkpoint"
        )
    records = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    analyses = []
    for i, checkpoint in enumerate(checkpoints):
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(
                f"checkpoint {checkpoint} is not a directory (a model directory written by training)"
            )
        model, collate = loader(checkpoint)
        adapter = getattr(model, "adapter", model)
        label = labels[i] if labels is not None else getattr(adapter, "registry_name", f"model{i}")
        analysis = analyze_model(model, records, collate, label, config, device)
        analysis.checkpoint = str(checkpoint)
        analyses.append(analysis)
        del model
    for analysis, label in zip(analyses, _unique_labels([a.label for a in analyses])):
        analysis.label = label
    return write_report(analyses, out_dir, config)
