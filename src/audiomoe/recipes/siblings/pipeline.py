"""``audiomoe siblings``: the seed paper's sibling methods, measured at toy scale on CPU in one command.

1. **Data** (the demo's, plus spoken arithmetic): the built-in corpus with ``extra_tasks`` (spoken sums and
   differences, a semantic task whose answer follows from the words), its ASR views, frozen Whisper features
   cached once. The foundation LLM is the demo's, pretrained ``foundation_steps`` steps on the corpus text *plus
   a text view of every semantic training item and of ``text_only_per_task`` text-only items per semantic task*
   (the transcript in quotes, then the question: the prompt ``eval --modality-gap`` asks), so that the text
   path is competent before CORD uses it as the teacher.
2. **Architecture arms** at matched active parameters (:mod:`.arms`): dense ``mlp``, single-layer ``moe``,
   ``moue-per-block`` and ``moue-staggered`` (MoUE-style), ``steps`` steps each, ≥ 3 seeds.
3. **Upcycling**: ``mlp-narrow`` (the MoE's expert width) trains ``steps/2`` steps, ``audiomoe upcycle``'s
   conversion makes it an MoE of the ``moe`` arm's shape, and it trains ``steps/2`` more: ``moe-upcycled`` vs the
   from-scratch ``moe`` at the same number of steps.
4. **Distillation**: each seed's ``moe`` model first trains ``text_steps`` steps of ``text_audio_lm`` (the
   next-token loss on the text view of the semantic items, which the foundation alone does not make competent,
   plus the audio view's loss on every item, so the groups the words cannot carry are not forgotten), then
   ``cord``, ``forward_kl`` and ``sft`` train ``distill_steps`` steps from it on the semantic training items; the modality gap before (the ``moe`` model) and after, the gap reduction
   (as CORD's paper: text score of the *starting* model − audio score of the method) and the other groups'
   scores (paralinguistic retention).
5. **Statistics** (:func:`audiomoe.evaluation.stats.compare`): means over seeds with 95% bootstrap intervals over
   items and seeds, paired differences with p-values and detectable sizes; ``report.md`` / ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from audiomoe.config import to_dict
from audiomoe.data.corpus import corpus_tasks, plan_text_items
from audiomoe.data.manifest import AudioRecord, read_manifest, write_manifest
from audiomoe.evaluation.runner import text_prompt
from audiomoe.evaluation.stats import compare
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.recipes.demo.arms import default_workers, run_arms
from audiomoe.recipes.demo.corpus import ensure_corpus, write_asr_views
from audiomoe.recipes.demo.foundation import ensure_foundation
from audiomoe.recipes.siblings.arms import (
    SiblingJob,
    architecture_adapters,
    describe_adapters,
    run_job,
    strip_dims,
)
from audiomoe.recipes.siblings.report import distillation_summary, render_markdown
from audiomoe.recipes.siblings.settings import PROFILES, SiblingsSettings
from audiomoe.recipes.stages import StageClock
from audiomoe.runtime import configure_threads, machine_info
from audiomoe.training.objectives.distill import usable_for_distillation
from audiomoe.training.upcycle import upcycle_model

ARCH_ARMS = ("mlp", "moe", "moue-per-block", "moue-staggered")
DISTILL_ARMS = ("cord", "forward_kl", "sft")
TEXT_ARM = "moe-text"  # each seed's moe model after the text-path stage: where the distillation arms start
START = f"start ({TEXT_ARM})"


def write_foundation_manifest(train_manifest: Path, out: Path, text_items: Sequence[AudioRecord] = ()) -> int:
    """The training records plus a text view (the instruction replaced by the text prompt, what the foundation
    LLM learns to answer from text) of every semantic item with a transcript and of every text-only item in
    ``text_items`` (:func:`audiomoe.data.corpus.plan_text_items`). Returns the number of text views."""
    records = [
        dataclasses.replace(r, audio=str(Path(r.audio).resolve())) for r in read_manifest(train_manifest)
    ]
    views = [dataclasses.replace(r, key=f"{r.key}-text", instruction=text_prompt(r))
             for r in [*records, *text_items] if usable_for_distillation(r) is None]  # fmt: skip
    write_manifest(records + views, out)
    return len(views)


def run_siblings(
    out: str | Path,
    quick: bool = False,
    seeds: int | None = None,
    workers: int | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Run everything; ``reuse`` reads back finished (arm, seed) runs in ``out`` instead of training them again."""
    settings: SiblingsSettings = PROFILES["quick" if quick else "full"]
    if seeds is not None:
        settings = settings.with_seeds(seeds)
    demo = settings.demo
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock("siblings")

    n_workers = workers or default_workers()
    configure_threads()
    corpus_dir = out / "corpus"
    corpus = ensure_corpus(corpus_dir, demo.clips, demo.corpus_seed, dict(demo.splits), settings.extra_tasks)
    train_manifest, test_manifest = corpus_dir / "train.jsonl", corpus_dir / "test.jsonl"
    asr_manifest = corpus_dir / "train-asr.jsonl"
    write_asr_views(train_manifest, asr_manifest)
    # The text LLM's own pretraining: text-only items of every semantic task, so that the text path is
    # competent (CORD's teacher) as a pretrained LLM's would be; the clips' own text views alone (~90 per task)
    # left arithmetic and digits by text at chance.
    semantic = corpus_tasks(settings.extra_tasks)["semantic"]
    text_items = plan_text_items(demo.corpus_seed, semantic, settings.text_only_per_task)
    text_views = write_foundation_manifest(train_manifest, corpus_dir / "foundation.jsonl", text_items)
    foundation_settings = dataclasses.replace(demo, foundation_steps=settings.foundation_steps)
    foundation = ensure_foundation(out / "foundation", foundation_settings, corpus_dir / "foundation.jsonl")
    overrides = demo.model_overrides(foundation["path"])
    clock.lap("corpus_and_foundation")

    probe = AudioLanguageModel(build_preset(demo.preset, "linear", **overrides))
    adapters = architecture_adapters(settings, probe.encoder.hidden_size, probe.llm.config.hidden_size)
    cache_dir = out / "cache"
    records = read_manifest(asr_manifest) + read_manifest(test_manifest)
    FeatureCache(cache_dir, probe).ensure(sorted({r.audio for r in records}), progress=False)
    del probe
    clock.lap("encode")

    def job(arm: str, seed: int, steps: int, model: dict[str, Any], **train: Any) -> SiblingJob:
        config = {
            "model": model,
            "data": {"train": [str(asr_manifest)], "batch_size": demo.batch_size, "feature_cache": str(cache_dir)},
            "optim": {"lr": demo.lr}, "schedule": {"warmup_steps": max(1, steps // 10)}, "steps": steps,
            "seed": seed, "out_dir": str(out / "runs" / arm / f"seed-{seed}"), "log_every": 10,
            "precision": settings.precision, "progress": False, "tensorboard": False, **train,
        }  # fmt: skip
        return SiblingJob(arm, seed, config, str(test_manifest), str(cache_dir), demo.eval_batch_size,
                          demo.max_new_tokens, reuse)  # fmt: skip

    def scratch(arm: str, seed: int, steps: int) -> SiblingJob:
        model = {"preset": demo.preset, "adapter": strip_dims(adapters[arm]), "overrides": overrides}
        return job(arm, seed, steps, model)

    def done(result: dict[str, Any]) -> None:
        print(f"[siblings] {result['arm']} seed {result['seed']}: trained in {result['train_seconds']:.0f} s, "
              f"evaluated in {result['eval_seconds']:.0f} s", flush=True)  # fmt: skip

    half = max(1, settings.steps // 2)
    first = [scratch(arm, s, settings.steps) for s in settings.seeds for arm in ARCH_ARMS]
    first += [scratch("mlp-narrow", s, half) for s in settings.seeds]
    results = run_arms(first, n_workers, on_done=done, runner=run_job)
    clock.lap("architecture_arms")

    by = {(r["arm"], r["seed"]): r for r in results}
    second, upcycle_reports = [], {}
    text_data = {"data": {"train": [str(train_manifest)], "batch_size": settings.text_batch,
                          "feature_cache": str(cache_dir)}}  # fmt: skip
    for s in settings.seeds:
        torch.manual_seed(s)  # the router's random init: the same upcycled start on every rerun
        model, report = upcycle_model(by[("mlp-narrow", s)]["model_dir"], "moe", num_experts=settings.experts,
                                      top_k=settings.top_k)  # fmt: skip
        upcycled_dir = out / "upcycled" / f"seed-{s}"
        model.save_pretrained(upcycled_dir)
        upcycle_reports[str(s)] = report
        second.append(job("moe-upcycled", s, half, {"path": str(upcycled_dir)}))
        # CORD's prerequisite: a text path better than the audio path (the start of the distillation arms)
        second.append(job(TEXT_ARM, s, settings.text_steps, {"path": by[("moe", s)]["model_dir"]},
                          objective={"type": "text_audio_lm", "audio_weight": settings.text_audio_weight},
                          **text_data))  # fmt: skip
    results += run_arms(second, n_workers, on_done=done, runner=run_job)
    by = {(r["arm"], r["seed"]): r for r in results}
    clock.lap("upcycled_and_text_path_arms")

    third = []
    for s in settings.seeds:
        base = {"path": by[(TEXT_ARM, s)]["model_dir"]}
        distill = {"data": {"train": [str(train_manifest)], "batch_size": settings.distill_batch,
                            "feature_cache": str(cache_dir)},
                   "optim": {"lr": settings.distill_lr},
                   "schedule": {"warmup_steps": max(1, settings.distill_steps // 10)}}  # fmt: skip
        for objective in DISTILL_ARMS:
            objective_config = {"type": objective, "max_new_tokens": settings.distill_max_new_tokens,
                                "group_size": settings.group_size}  # fmt: skip
            third.append(
                job(objective, s, settings.distill_steps, base, objective=objective_config, **distill)
            )
    results += run_arms(third, n_workers, on_done=done, runner=run_job)
    clock.lap("distillation_arms")

    evals: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        evals.setdefault(result["arm"], []).append(json.loads(Path(result["eval"]).read_text()))
    architecture = compare({a: evals[a] for a in ARCH_ARMS}, reference="moue-staggered")
    upcycling = compare({a: evals[a] for a in ("moe-upcycled", "moe")}, reference="moe-upcycled")
    distill_evals = {START: evals[TEXT_ARM], "moe": evals["moe"], **{a: evals[a] for a in DISTILL_ARMS}}
    distillation = compare(distill_evals, reference="cord")
    versus_base = compare(distill_evals, reference=START)
    clock.lap("statistics")

    runs = {arm: {"train_seconds_mean": round(fmean(r["train_seconds"] for r in results if r["arm"] == arm), 1),
                  "final_loss_mean": fmean(r["final_loss"] for r in results if r["arm"] == arm),
                  "last_objective_terms": [r["last_objective_terms"] for r in results if r["arm"] == arm]}
            for arm in evals}  # fmt: skip
    report = {
        "scale": "toy",
        "profile": "quick" if quick else "full",
        "seeds": list(settings.seeds),
        "settings": to_dict(settings),
        "machine": machine_info(),
        "workers": n_workers,
        "precision": settings.precision,
        "threads_per_worker": 1 if n_workers > 1 else machine_info().get("threads"),
        "corpus": {k: corpus.get(k) for k in ("n", "seed", "splits", "extra_tasks", "reused")}
        | {"text_views": text_views},
        "foundation": foundation,
        "adapters": describe_adapters(adapters),
        "upcycle": upcycle_reports,
        "runs": runs,
        "architecture": architecture,
        "upcycling": upcycling,
        "distillation": distillation,
        "distillation_summary": distillation_summary(evals[TEXT_ARM], versus_base, DISTILL_ARMS, START),
        "timings": clock.timings,
        "wall_seconds": round(clock.elapsed(), 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report
