"""One training run of an LALM from a :class:`TrainConfig`: what ``audiomoe train`` and the demo call.

    result = train(load_train_config("demo", ["steps=50"]))

Steps: seed -> build the model (preset or saved directory) -> read manifests -> fill the feature cache when the
encoder is frozen and ``data.feature_cache`` is set -> duration-bucketed, rank-sharded batches -> :class:`Trainer`
-> ``RUN/model`` (``save_pretrained``: what ``audiomoe eval`` / ``infer`` load) and ``RUN/summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from audiomoe.config import deep_merge, from_dict, load_config, to_dict
from audiomoe.data.manifest import AudioRecord, read_manifest
from audiomoe.data.sampler import BucketBatchSampler
from audiomoe.evaluation.runner import GenerationSettings, generate_answers, score_predictions
from audiomoe.models.batching import RecordBatcher, count_frames
from audiomoe.models.directory import MODEL_DIR
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel, LALMConfig
from audiomoe.models.presets import build_preset
from audiomoe.training import checkpoint as ckpt
from audiomoe.training.config import ModelSection, TrainConfig
from audiomoe.training.distributed import DistEnv, barrier, default_device, init_distributed, shutdown
from audiomoe.training.objectives import build_objective
from audiomoe.training.stream import BatchStream
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


def read_records(paths: list[str], on_bad_line: str) -> list[AudioRecord]:
    records: list[AudioRecord] = []
    for path in paths:
        records += read_manifest(path, on_error=on_bad_line)  # type: ignore[arg-type]
    return records


def open_cache(
    config: TrainConfig, model: AudioLanguageModel, records: list[AudioRecord], env: DistEnv
) -> FeatureCache | None:
    """The frozen-encoder cache, filled by rank 0 (the others wait, then read the same shards)."""
    if not config.data.feature_cache:
        return None
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
    full weights of the final checkpoint (gathered when it was written) instead."""
    if not (env.enabled and config.strategy == "fsdp"):
        return model
    full = build_model(config.model)
    final = ckpt.latest_checkpoint(config.run_dir / "checkpoints")
    full.load_state_dict(ckpt.load_tensors(final / ckpt.MODEL_FILE), strict=False)
    return full


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path
    summary: dict[str, Any]


def train(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train as configured; returns where the model was saved and the run summary."""
    if not config.data.train:
        raise ValueError("data.train is empty: give one or more training manifests (data.train=[a.jsonl])")
    env = DistEnv.from_env()
    device = default_device(env)
    init_distributed(env, device)  # before the feature cache: rank 0 fills it while the others wait
    seed_everything(config.seed)
    model = build_model(config.model)
    objective = build_objective(config.objective)
    train_records = objective.select(read_records(config.data.train, config.data.on_bad_line))
    dev_records = read_records(config.data.dev, config.data.on_bad_line)[: config.data.max_dev_items]
    cache = open_cache(config, model, train_records + dev_records, env)
    batcher = RecordBatcher(train_records, model.processor, cache)
    durations = [r.duration or 0.0 for r in train_records]
    sampler = BucketBatchSampler(
        durations, config.data.batch_size, seed=config.seed, rank=env.rank, world_size=env.world_size
    )
    stream = BatchStream(sampler.batches, objective.collate(batcher))

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
        objective=objective,
    )
    result = trainer.fit(resume=resume)
    model_dir = config.run_dir / MODEL_DIR
    summary: dict[str, Any] = {}
    if env.is_main:
        export_model(config, model, env).save_pretrained(model_dir)
        summary = {
            "steps": result.step,
            "final_loss": result.last_loss,
            "train_seconds": round(result.train_seconds, 2),
            # what train_seconds was measured with ("auto" resolved on this machine)
            "precision": trainer.precision,
            "threads": torch.get_num_threads(),
            "params": model.param_summary(),
            "feature_cache": str(cache.dir) if cache is not None else None,
            "train_items": len(train_records),
            "padding_fraction": round(sampler.padding_fraction(0), 4),
        }
        (config.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    del trainer
    shutdown(env)
    return RunResult(config.run_dir, model_dir, summary)
