"""One training run of an LALM from a :class:`TrainConfig`: what ``audiomoe train`` and the demo call.

    result = train(load_train_config("demo", ["steps=50"]))

Steps: seed -> build the model (preset or saved directory) -> read manifests -> fill the feature cache when the
encoder is frozen and ``data.feature_cache`` is set -> duration-bucketed, rank-sharded batches -> :class:`Trainer`
-> ``RUN/model`` (``save_pretrained``: what ``audiomoe eval`` / ``infer`` load) and ``RUN/summary.json``.

Before step 1 every train and dev clip is decoded once (:mod:`audiomoe.data.preflight`): a broken clip stops the
run naming its manifest line (``data.on_bad_line=fail``) or is dropped and counted (``skip``). ``--resume`` checks
the config against the checkpoint's fingerprint (:mod:`audiomoe.training.fingerprint`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from audiomoe.config import ConfigError, deep_merge, from_dict, load_config, to_dict
from audiomoe.data.manifest import AudioRecord, ManifestLoad
from audiomoe.data.preflight import preflight
from audiomoe.data.sources import as_source
from audiomoe.data.tasks import TASKS_FILE_NAME, load_tasks_files, saved_tasks, write_tasks_file
from audiomoe.evaluation.runner import GenerationSettings, generate_answers, score_predictions
from audiomoe.models.batching import RecordBatcher, count_frames
from audiomoe.models.directory import MODEL_DIR
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel, LALMConfig
from audiomoe.models.presets import build_preset
from audiomoe.training import checkpoint as ckpt
from audiomoe.training.config import ModelSection, TrainConfig
from audiomoe.training.distributed import DistEnv, barrier, default_device, init_distributed, shutdown
from audiomoe.training.fingerprint import check_resume, config_fingerprint
from audiomoe.training.loading import (
    LoaderStream,
    build_plan,
    by_source,
    collated_batch,
    decode_batch,
    fill_durations,
    read_sources,
)
from audiomoe.training.objectives import Objective, build_objective
from audiomoe.training.streaming import ShardStream, is_streamed, open_stream
from audiomoe.training.trainer import Trainer, seed_everything


def resolve_lalm_config(section: ModelSection) -> LALMConfig:
    """The :class:`LALMConfig` of an LALM YAML or a preset, with the adapter and config overrides merged in."""
    fields: dict[str, Any] = dict(section.overrides)
    if section.config:
        base = to_dict(load_config(LALMConfig, section.config))
        # A new adapter type replaces the file's adapter section; otherwise the keys are merged into it.
        swap = section.adapter.get("type", base["adapter"]["type"]) != base["adapter"]["type"]
        base["adapter"] = dict(section.adapter) if swap else deep_merge(base["adapter"], section.adapter)
        return from_dict(LALMConfig, deep_merge(base, fields))
    adapter = dict(section.adapter)
    adapter_type = adapter.pop("type", "linear")
    if adapter:
        fields["adapter"] = deep_merge(fields.get("adapter", {}), adapter)
    return build_preset(section.preset, adapter_type, **fields)


def build_model(section: ModelSection) -> AudioLanguageModel:
    """A saved model directory (``path``), else the resolved config built (weights loaded from their paths)."""
    if section.path:
        return AudioLanguageModel.from_pretrained(section.path)
    return AudioLanguageModel(resolve_lalm_config(section))


def read_manifests(config: TrainConfig, specs: list[Any]) -> list[ManifestLoad]:
    """Each source parsed (bad lines fail or are skipped and summarised, as ``data.on_bad_line`` says)."""
    return read_sources(specs, config.data.on_bad_line, config.data.max_text_chars)


def read_data(
    config: TrainConfig,
) -> tuple[list[AudioRecord], list[int], list[float], list[AudioRecord], dict[str, int]]:
    """Train records whose clips decode with the source index of each and the sources' weights, the dev records,
    and how many lines / clips were skipped per split."""
    streamed = is_streamed(config.data.train)  # tar shards: read as they stream, never listed
    train_loads, dev_loads = (
        [] if streamed else read_manifests(config, config.data.train),
        read_manifests(config, config.data.dev),
    )
    skipped = {
        "train_lines": sum(len(load.problems) for load in train_loads),
        "dev_lines": sum(len(load.problems) for load in dev_loads),
    }
    loads = train_loads + dev_loads
    kept = [load.records for load in loads]
    if config.data.preflight:
        report = preflight(loads, config.data.on_bad_line)
        kept = report.records
        bad = {p.path for p in report.problems}
        skipped["train_clips"] = sum(1 for p in report.problems if p.path in {ld.path for ld in train_loads})
        skipped["dev_clips"] = len(report.problems) - skipped["train_clips"]
        print(f"preflight: {report.decoded} clips decoded, {report.cached} known good, {len(report.problems)} "
              f"skipped{' in ' + ', '.join(sorted(bad)) if bad else ''}", file=sys.stderr)  # fmt: skip
        if streamed:
            print("preflight: the streamed training shards are not listed; their clips are checked as they "
                  "decode (data.on_bad_line)", file=sys.stderr)  # fmt: skip
    train_records, origin = by_source(kept[: len(train_loads)])
    dev_records, _ = by_source(kept[len(train_loads) :])
    if not train_records and not streamed:
        names = ", ".join(as_source(s).path for s in config.data.train)
        raise ValueError(f"no usable training item in {names} (all lines were skipped)")
    weights = [as_source(s).weight for s in config.data.train]
    return train_records, origin, weights, dev_records, skipped


def finite_json(value: Any) -> Any:
    """``value`` with NaN / inf floats as ``None``, so ``json.dumps(allow_nan=False)`` writes valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def open_cache(
    config: TrainConfig, model: AudioLanguageModel, records: list[AudioRecord], env: DistEnv
) -> FeatureCache | None:
    """The frozen-encoder cache, filled by rank 0 (the others wait, then read the same shards)."""
    if not config.data.feature_cache:
        return None
    if any(r.start is not None for r in records):
        raise ValueError(
            "data.feature_cache keys clips by file, so it cannot hold segments (lhotse cuts, NeMo offsets) yet; "
            "drop data.feature_cache for this data"
        )
    cache = FeatureCache(config.data.feature_cache, model, dtype=config.data.feature_cache_dtype)
    if env.is_main:
        started = time.perf_counter()
        encoded = cache.ensure([r.audio for r in records], progress=config.progress)
        if encoded:
            print(
                f"feature cache: encoded {encoded} clips in {time.perf_counter() - started:.1f} s -> {cache.dir}"
            )
    barrier(env)
    if not env.is_main:
        cache = FeatureCache(config.data.feature_cache, model, dtype=config.data.feature_cache_dtype)
    return cache


def export_model(config: TrainConfig, model: AudioLanguageModel, env: DistEnv) -> AudioLanguageModel:
    """The model to save. Under FSDP the live parameters are shards, so rank 0 rebuilds the model and loads the
    full weights of the final checkpoint (gathered when it was written, or read from every rank's shards)."""
    if not (env.enabled and config.strategy == "fsdp"):
        return model
    full = build_model(config.model)
    final = ckpt.latest_checkpoint(config.run_dir / "checkpoints")
    if ckpt.is_sharded(final):
        ckpt.load_sharded_model(final, full)
    else:
        full.load_state_dict(ckpt.load_tensors(final / ckpt.MODEL_FILE), strict=False)
    return full


def precheck_resume(config: TrainConfig, allow_changes: list[str], world_size: int) -> None:
    """Refuse a changed config before building anything: a changed adapter would otherwise fail while the model
    is built, with a message about the adapter rather than the diff. (The trainer checks again, on the
    checkpoint it actually resumes, with the data counted.)"""
    latest = ckpt.latest_checkpoint(config.run_dir / "checkpoints")
    if latest is None:
        return
    try:
        saved = dict(ckpt.read_manifest(latest).get("fingerprint", {}))
    except ckpt.CheckpointError:
        return  # a damaged newest checkpoint: the trainer verifies and falls back
    saved.pop("data.train_items", None)
    check_resume(saved, config_fingerprint(config, world_size), allow_changes, str(latest))


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path
    summary: dict[str, Any]
    already_done: bool = False  # a --resume of a finished run: nothing trained, nothing written


def train(config: TrainConfig, resume: bool = False, allow_changes: list[str] | None = None) -> RunResult:
    """Train as configured; returns where the model was saved and the run summary. ``allow_changes``: config
    keys (or sections) a ``resume`` may find changed (see :func:`audiomoe.training.fingerprint.check_resume`)."""
    if not config.data.train:
        raise ValueError("data.train is empty: give one or more training manifests (data.train=[a.jsonl])")
    env = DistEnv.from_env()
    device = default_device(env)
    init_distributed(env, device)  # before the feature cache: rank 0 fills it while the others wait
    if resume:
        precheck_resume(config, list(allow_changes or []), env.world_size)
    seed_everything(config.seed)
    load_tasks_files(config.data.tasks)  # before the manifests: records name these tasks
    model = build_model(config.model)
    objective = build_objective(config.objective)
    # the plain objective decodes clip by clip (a bad clip costs only itself); one with its own batches
    # (teacher text views) collates them whole
    own_batches = type(objective).collate is not Objective.collate
    streamed = is_streamed(config.data.train)
    if streamed and own_batches:
        raise ConfigError(
            f"objective.type={config.objective.type} builds its own batches, which streamed tar shards do not "
            "support yet; list the data (audiomoe data convert) or use objective.type=lm"
        )
    train_records, origin, weights, dev_records, skipped = read_data(config)
    # e.g. CORD: only items with a transcript and a semantic task (streamed records are not listed)
    selected = train_records if streamed else objective.select(train_records)
    if len(selected) != len(train_records):
        kept = {id(r) for r in selected}
        origin = [o for r, o in zip(train_records, origin) if id(r) in kept]
        train_records = selected
    dev_records = dev_records[: config.data.max_dev_items]
    durations_from_headers = fill_durations(train_records)
    stream: LoaderStream | ShardStream
    if streamed:
        stream, sampler, cache = open_stream(config, model.processor, env.rank, env.world_size), None, None
    else:
        cache = open_cache(config, model, train_records + dev_records, env)
        batcher = RecordBatcher(train_records, model.processor, cache)
        sampler = build_plan(
            train_records, origin, weights, config.data, config.seed, env.rank, env.world_size
        )
        load = (
            partial(collated_batch, objective.collate(batcher))
            if own_batches
            else partial(decode_batch, batcher)
        )
        stream = LoaderStream(
            sampler.batches, load, config.data.num_workers, skip_bad_clips=config.data.on_bad_line == "skip"
        )

    evaluate = None
    if dev_records:
        dev_batcher = RecordBatcher(dev_records, model.processor, cache)
        settings = GenerationSettings(batch_size=config.data.eval_batch_size, progress=False)

        def evaluate(unwrapped: Any) -> dict[str, float]:
            predictions = generate_answers(unwrapped, dev_batcher, dev_records, settings)
            report = score_predictions(dev_records, predictions)
            return {"dev_score": report["overall"], **{f"dev_{g}": s for g, s in report["groups"].items()}}

    tracker = None
    if config.grad_conflict_every and env.is_main:
        # fixed probe batches per audio category, measured on the unwrapped model
        from audiomoe.analysis.gradients import GradientConflictTracker
        from audiomoe.analysis.report import AnalysisConfig, make_probes

        probe_config = AnalysisConfig(
            probe_batches=1, probe_batch_size=config.data.batch_size, seed=config.seed
        )

        def collate(records: list[AudioRecord]) -> dict[str, Any]:
            return batcher.batch(records, [r.instruction for r in records])

        probes = make_probes(train_records, collate, "category", probe_config, device)
        tracker = GradientConflictTracker(model, probes, interval=config.grad_conflict_every)
    trainer = Trainer(
        config,
        model,
        stream,
        evaluate=evaluate,
        count_frames=count_frames,
        env=env,
        device=device,
        tracker=tracker,
        fingerprint=config_fingerprint(
            config, env.world_size, None if sampler is None else len(train_records)
        ),
        objective=objective,
    )
    result = trainer.fit(resume=resume, allow_changes=allow_changes)
    model_dir = config.run_dir / MODEL_DIR
    summary: dict[str, Any] = {}
    if result.already_done:  # a finished run: nothing is written again
        summary_path = config.run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() and env.is_main else {}
        del trainer
        shutdown(env)
        return RunResult(config.run_dir, model_dir, summary, already_done=True)
    if env.is_main:
        exported = export_model(config, model, env)
        bad = ckpt.non_finite({k: v for k, v in exported.state_dict().items()})
        if bad:
            raise ckpt.CheckpointError(
                f"refusing to save a model with non-finite weights to {model_dir} ({bad})"
            )
        # the tasks it was trained with, so `audiomoe eval` scores them the same way without --tasks
        trained = getattr(stream, "tasks", {r.task for r in train_records})  # streamed: the tasks seen
        tasks = saved_tasks([*trained, *(r.task for r in dev_records)])
        try:
            with ckpt.write_errors_as_os_errors(model_dir):
                exported.save_pretrained(model_dir)
        except OSError as err:
            raise ckpt.storage_error(err, model_dir, "the model") from None
        for directory in (config.run_dir, model_dir) if tasks else ():
            try:
                write_tasks_file(tasks, directory / TASKS_FILE_NAME)
            except OSError as err:
                raise ckpt.storage_error(err, directory / TASKS_FILE_NAME, "the tasks file") from None
        summary = {
            "steps": result.step,
            "final_loss": result.last_loss,
            "train_seconds": round(result.train_seconds, 2),
            # what train_seconds was measured with ("auto" resolved on this machine)
            "precision": trainer.precision,
            "threads": torch.get_num_threads(),
            "optimizer": f"AdamW ({trainer.optimizer.audiomoe_implementation})",
            "params": model.param_summary(),
            "feature_cache": str(cache.dir) if cache is not None else None,
            "train_items": len(train_records) if sampler is not None else None,  # streamed: not listed
            "durations_from_headers": durations_from_headers,
            "padding_fraction": None if sampler is None else round(sampler.padding_fraction(0), 4),
            "skipped": skipped,
            "non_finite_steps": result.non_finite_steps,
            "num_workers": config.data.num_workers,
            "skipped_clips": stream.skipped,
            "skip_reasons": stream.reasons,
        }
        if result.eval_error:
            summary["dev_error"] = result.eval_error
        summary = finite_json(summary)
        try:
            (config.run_dir / "summary.json").write_text(
                json.dumps(summary, indent=1, allow_nan=False) + "\n"
            )
        except OSError as err:
            raise ckpt.storage_error(err, config.run_dir / "summary.json", "the summary") from None
    del trainer
    shutdown(env)
    if result.eval_error:
        raise ValueError(f"{result.eval_error}; the checkpoint and the model in {model_dir} were saved first")
    return RunResult(config.run_dir, model_dir, summary)
