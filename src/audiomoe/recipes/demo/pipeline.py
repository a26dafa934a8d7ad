"""``audiomoe demo``: does the MoE-Adapter beat dense adapters at matched parameters on heterogeneous audio, and
where? The whole answer at toy scale on CPU, in one command:

1. **Corpus** (:mod:`.corpus`): the built-in heterogeneous corpus (speech with held-out voices and sentences,
   music, sound events, mixtures), built once; the training manifest gains an ASR view of every spoken clip.
2. **Encoder**: real pretrained Whisper tiny.en, frozen; its outputs are computed once into the feature cache
   at each clip's own length (:mod:`.encoding` measures that against full 30 s windows).
3. **LLM foundation** (:mod:`.foundation`): a small Qwen2 LM with a BPE vocabulary learned on the corpus text,
   pretrained on that text once; every arm starts from it and trains end to end.
4. **Arms** (:mod:`.arms`): ``linear``, ``mlp``, ``moe`` and the MoE's dense twin at matched parameters, each
   trained and evaluated once per seed, in parallel single-threaded processes.
5. **Statistics** (:mod:`audiomoe.evaluation.stats`): per arm and task / group / overall the mean over seeds with
   a 95% bootstrap interval; the MoE against each dense arm as a paired difference with its interval, p-value
   and the smallest difference the test could detect; verdict sentences from the intervals; a forest plot.
6. **Analysis** (:mod:`.analysis`, :mod:`.claims`): gradient conflict, expert specialisation and balance of the
   seed-0 models against the paper's figures.
7. **Report** (:mod:`.report`): ``report.md`` / ``report.json``.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from statistics import fmean
from typing import Any

from audiomoe.config import to_dict
from audiomoe.data.manifest import read_manifest
from audiomoe.data.tasks import TASK_GROUPS, TASKS
from audiomoe.evaluation.forest import forest_plot
from audiomoe.evaluation.stats import compare
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.recipes.demo.analysis import ANALYSIS_SPLITS, analyze_arms
from audiomoe.recipes.demo.arms import (
    ArmJob,
    arm_adapters,
    default_workers,
    faster_precision,
    run_arms,
    strip_dims,
)
from audiomoe.recipes.demo.corpus import ensure_corpus, write_asr_views
from audiomoe.recipes.demo.encoding import trim_effect_on_results, trim_measurement
from audiomoe.recipes.demo.foundation import ensure_foundation
from audiomoe.recipes.demo.report import competence, render_markdown
from audiomoe.recipes.demo.settings import PROFILES, REFERENCE_ARM, DemoSettings
from audiomoe.recipes.stages import StageClock
from audiomoe.runtime import configure_threads, machine_info, resolve_precision


def peak_rss_gib(results: list[dict[str, Any]], workers: int) -> float:
    """Peak resident memory of the demo, an upper bound: this process's peak plus the ``workers`` largest arm
    workers' peaks (they run side by side while this process waits). ru_maxrss is in KiB on Linux."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peaks = sorted((r.get("worker_peak_rss_gib", 0.0) for r in results), reverse=True)
    return own + (sum(peaks[:workers]) if workers > 1 else 0.0)


def run_demo(
    out: str | Path,
    quick: bool = False,
    seeds: int | None = None,
    workers: int | None = None,
    profile: str = "full",
    overrides: list[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run everything; writes ``out/report.md`` and ``out/report.json`` and returns the report.

    ``profile``: ``full`` (the toy demo), ``quick`` (the smoke test; also ``quick=True``) or ``experiment``
    (real pretrained LLM, ``make experiment``). ``overrides``: ``key=value`` on the profile's
    :class:`DemoSettings`. ``resume``: keep the (arm, seed) runs of an earlier call with the same settings,
    finished or interrupted (see :func:`~audiomoe.recipes.demo.arms.run_arm`)."""
    profile = "quick" if quick else profile
    if profile not in PROFILES:
        raise ValueError(f"unknown demo profile {profile!r}; choose one of {sorted(PROFILES)}")
    settings: DemoSettings = PROFILES[profile].with_overrides(overrides or [])
    if seeds is not None:
        settings = settings.with_seeds(seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock("demo")

    machine = machine_info()
    n_workers = workers or settings.workers or default_workers()
    configure_threads()  # the parent's own stages (encoding the corpus once, analysis)
    tag = "" if profile == "full" else f"-{profile}"
    corpus_dir = out / f"corpus{tag}"
    corpus = ensure_corpus(corpus_dir, settings.clips, settings.corpus_seed, dict(settings.splits))
    train_manifest = corpus_dir / "train.jsonl"
    views = None
    if settings.asr_views:
        views = write_asr_views(train_manifest, corpus_dir / "train-asr.jsonl")
        train_manifest = corpus_dir / "train-asr.jsonl"
    train_records = read_manifest(train_manifest)  # read once: encoding and the precision probe use it
    views = views or {"records": len(train_records), "asr_views": 0}
    clock.lap("corpus")
    if settings.foundation_steps:
        foundation = ensure_foundation(out / f"foundation{tag}", settings, corpus_dir / "train.jsonl")
    else:
        foundation = {"pretrained": to_dict(build_preset(settings.preset, "linear").llm)}
    overrides = settings.model_overrides(foundation.get("path", ""))
    clock.lap("foundation")

    probe = AudioLanguageModel(build_preset(settings.preset, "linear", **overrides))
    adapters = arm_adapters(settings, probe.encoder.hidden_size, probe.llm.config.hidden_size)
    test_manifest = corpus_dir / "test.jsonl"
    test_records = read_manifest(test_manifest)
    held_out = [r for split in ANALYSIS_SPLITS for r in read_manifest(corpus_dir / f"{split}.jsonl")]
    cache_dir = out / "cache"
    # Every clip the arms will read, encoded once here; the workers only read the cache.
    FeatureCache(cache_dir, probe).ensure(
        sorted({r.audio for r in train_records + held_out}), progress=not quick
    )
    clock.lap("encode")
    # bf16 only where native (runtime) *and* faster for this workload (a few timed steps of an arm's model)
    native = resolve_precision(settings.precision, "cpu")
    candidates = ("fp32", "bf16") if settings.precision == "auto" and native == "bf16" else (native,)
    arm_model = AudioLanguageModel(
        build_preset(settings.preset, "moe", adapter=strip_dims(adapters[REFERENCE_ARM]), **overrides)
    )
    records = train_records[: settings.batch_size]
    batcher = RecordBatcher(records, arm_model.processor, FeatureCache(cache_dir, arm_model))
    precision_choice = faster_precision(
        arm_model.train(), batcher.batch(records, [r.instruction for r in records]), candidates
    )
    precision = precision_choice["chosen"]
    del arm_model
    clock.lap("precision")
    trim_records = test_records[: settings.trim_probe_clips]
    # its own cache: the encoding times must not find the clips already encoded by the stage above
    trim_cache = out / f"cache-trim-probe{tag}"
    trim = trim_measurement(probe, trim_records, trim_cache, out / f"trim{tag}-{len(trim_records)}.json")
    del probe
    clock.lap("trim_measurement")

    jobs = [
        ArmJob(arm=arm, seed=seed, adapter=adapters[arm], settings=settings, precision=precision,
               llm_dir=foundation.get("path", ""), train_manifest=str(train_manifest), test_manifest=str(test_manifest),
               cache_dir=str(cache_dir), run_dir=str(out / "runs" / arm / f"seed-{seed}"), resume=resume)
        for seed in settings.seeds
        for arm in settings.arms
    ]  # fmt: skip

    def done(result: dict[str, Any]) -> None:
        reused = " (reused: --resume)" if result.get("reused") else ""
        print(
            f"[demo] {result['arm']} seed {result['seed']}: trained in {result['train_seconds']:.0f} s, "
            f"evaluated in {result['eval_seconds']:.0f} s{reused}",
            flush=True,
        )

    results = run_arms(jobs, n_workers, on_done=done)
    clock.lap("arms")

    evals: dict[str, list[dict[str, Any]]] = {arm: [] for arm in settings.arms}
    for result in results:
        evals[result["arm"]].append(json.loads(Path(result["eval"]).read_text()))
    comparison = compare(evals, reference=REFERENCE_ARM)
    comparison["forest_plot"] = forest_plot(comparison, out / "forest.png").name
    clock.lap("statistics")

    seed0 = {r["arm"]: r for r in results if r["seed"] == settings.seeds[0]}
    moe_model = AudioLanguageModel.from_pretrained(seed0[REFERENCE_ARM]["model_dir"]).eval()
    trim.update(trim_effect_on_results(moe_model, trim_records, trim_cache, settings))
    del moe_model
    analysis = analyze_arms(seed0, held_out, cache_dir, out / "analysis") if settings.analyse else {}
    clock.lap("analysis")

    arms = {arm: summarise_arm(adapters[arm], [r for r in results if r["arm"] == arm], evals[arm])
            for arm in settings.arms}  # fmt: skip
    report = {
        "scale": "toy",
        "quick": profile == "quick",
        "profile": profile,
        "seeds": list(settings.seeds),
        "settings": to_dict(settings),
        "machine": machine,
        "precision": precision,
        "precision_choice": precision_choice,
        "workers": n_workers,
        "reused_runs": sum(bool(r.get("reused")) for r in results),
        "threads_per_worker": 1 if n_workers > 1 else machine.get("threads"),
        "corpus": {k: corpus.get(k) for k in ("out_dir", "n", "seed", "splits", "seconds", "reused")}
        | {
            "train_records": views["records"],
            "asr_views": views["asr_views"],
            "test_items": len(test_records),
        },
        "task_groups": [g for g in TASK_GROUPS if any(t.group == g for t in TASKS.values())],
        "foundation": foundation,
        "trim_to_clip": trim,
        "arms": arms,
        "comparison": comparison,
        "competence": competence(comparison),
        "analysis": analysis,
        "timings": clock.timings,
        "wall_seconds": round(clock.elapsed(), 1),
        "peak_rss_gib": round(peak_rss_gib(results, n_workers), 2),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def summarise_arm(
    adapter: dict[str, Any], runs: list[dict[str, Any]], evals: list[dict[str, Any]]
) -> dict[str, Any]:
    """One arm over its seeds: parameters, mean training time and loss, modality gap per seed, the run dirs."""
    gaps: dict[str, list[dict[str, float]]] = {}
    for e in evals:
        for task, gap in e.get("modality_gap", {}).items():
            gaps.setdefault(task, []).append(gap)
    return {
        "adapter": adapter,
        "params_total": runs[0]["params_total"],
        "params_active": runs[0]["params_active"],
        "llm_params": runs[0]["llm_params"],
        "train_seconds_mean": round(fmean([r["train_seconds"] for r in runs]), 1),
        "final_loss_mean": fmean([r["final_loss"] for r in runs]),
        "modality_gap": {
            task: {k: fmean([g[k] for g in per_seed]) for k in ("audio", "text", "gap")}
            | {"seeds": len(per_seed)}
            for task, per_seed in gaps.items()
        },
        "runs": {str(r["seed"]): r["model_dir"] for r in runs},
    }
