"""The four arms at matched parameters, and training + evaluating every (arm, seed) pair, side by side.

Arms run as separate processes of one thread each rather than one process of many threads: the runs are
independent, so processes need no synchronisation, and a single-threaded process never spin-waits on a team of
OpenMP threads, which is what collapses a two-thread run when another program takes one of the cores (measured:
11x slower). With ``W`` workers on ``W`` free cores the throughput is ``W`` runs at the one-thread speed.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from audiomoe.adapters.presets import count_parameters, matched_moe_config
from audiomoe.config import from_dict, to_dict
from audiomoe.data.manifest import read_manifest
from audiomoe.evaluation.evaluate import evaluate_records
from audiomoe.evaluation.runner import GenerationSettings
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.recipes.demo.settings import DemoSettings
from audiomoe.runtime import autocast, usable_cores
from audiomoe.training.checkpoint import latest_checkpoint
from audiomoe.training.config import TrainConfig
from audiomoe.training.run import train

EVAL_FILE = "eval.json"
JOB_FILE = (
    "demo-job.json"  # the job a run directory holds: --resume reuses the directory only for the same job
)
RESULT_FILE = "arm-result.json"  # written last: its presence means the run trained, saved and evaluated
PRECISION_MARGIN = 0.9  # bf16 must be at least 10% faster per step than fp32 to be chosen


def arm_adapters(settings: DemoSettings, input_dim: int, output_dim: int) -> dict[str, dict[str, Any]]:
    """The four adapters: ``linear`` (the smallest baseline), ``mlp`` (an FFN), ``moe`` (the MoE matched to the
    mlp's *active* parameters per token) and ``dense-twin`` (an FFN with the MoE's *total* parameters)."""
    front = {"input_dim": input_dim, "output_dim": output_dim, "downsample": "stack",
             "downsample_factor": settings.downsample_factor}  # fmt: skip
    mlp = {"type": "mlp", **front, "mlp_type": "ffn", "hidden_dim": settings.mlp_hidden}
    moe = to_dict(
        matched_moe_config(mlp, num_experts=settings.experts, top_k=settings.top_k, expert_type="ffn")
    )
    target = count_parameters(moe)["total_params"]

    def total(width: int) -> int:
        return count_parameters({**mlp, "hidden_dim": width})["total_params"]

    # Parameters are affine in the hidden width: solve for the width whose total equals the MoE's.
    slope = total(2) - total(1)
    twin = {**mlp, "hidden_dim": max(1, round((target - total(1)) / slope) + 1)}
    return {"linear": {"type": "linear", **front}, "mlp": mlp, "moe": moe, "dense-twin": twin}


def strip_dims(adapter: dict[str, Any]) -> dict[str, Any]:
    """An arm's adapter without its input/output widths (the model fills those from the encoder and LLM)."""
    return {k: v for k, v in adapter.items() if k not in ("input_dim", "output_dim")}


@dataclass(frozen=True)
class ArmJob:
    """Everything one worker needs to train and evaluate one (arm, seed) pair (picklable)."""

    arm: str
    seed: int
    adapter: dict[str, Any]
    settings: DemoSettings
    precision: str  # already resolved for this machine
    llm_dir: str  # the foundation LLM ("": the preset's own)
    train_manifest: str
    test_manifest: str
    cache_dir: str
    run_dir: str
    resume: bool = False  # reuse a finished run of the same job, continue an interrupted one


# settings that choose which runs exist or how they are scheduled, not what one (arm, seed) run does
RUN_SET_FIELDS = ("seeds", "arms", "workers", "analyse")


def job_identity(job: ArmJob) -> dict[str, Any]:
    """What makes two jobs the same run, as JSON-ready data: everything but the resume flag and the settings
    that only select or schedule runs (so ``--seeds 5 --resume`` keeps seeds 0-2)."""
    identity = {k: v for k, v in to_dict(job).items() if k != "resume"}
    identity["settings"] = {k: v for k, v in identity["settings"].items() if k not in RUN_SET_FIELDS}
    return identity


def run_arm(job: ArmJob) -> dict[str, Any]:
    """Train one arm with one seed, evaluate it on the test split (with the modality gap), write ``eval.json``
    beside the run (``audiomoe compare`` reads it) and return the summary the report needs.

    With ``job.resume`` a run directory that holds the same job (``demo-job.json``) is kept: finished (its
    ``arm-result.json`` written), its result is returned as it is; interrupted, training continues from its
    latest checkpoint (exactly, as ``audiomoe train --resume``). Any other directory is replaced by a fresh run.
    Resuming trusts that the code has not changed since the run began."""
    run_dir = Path(job.run_dir)
    identity = job_identity(job)
    same_job = job.resume and _read_json(run_dir / JOB_FILE) == json.loads(json.dumps(identity))
    if same_job and (run_dir / RESULT_FILE).is_file():
        return json.loads((run_dir / RESULT_FILE).read_text()) | {"reused": True}
    # an interrupted run of this job continues from its checkpoint; before its first one there is nothing to keep
    same_job = same_job and latest_checkpoint(run_dir / "checkpoints") is not None
    if run_dir.exists() and not same_job:
        shutil.rmtree(run_dir)  # same arm and seed, fresh run: the report must describe this run
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_FILE).write_text(json.dumps(identity, indent=1) + "\n")
    settings = job.settings
    adapter = strip_dims(job.adapter)
    overrides = settings.model_overrides(job.llm_dir)  # the foundation LLM, the encoder's states
    config = from_dict(
        TrainConfig,
        {
            "model": {"preset": settings.preset, "adapter": adapter, "overrides": overrides},
            "data": {"train": [job.train_manifest], "batch_size": settings.batch_size,
                     "feature_cache": job.cache_dir},
            "optim": {"lr": settings.lr}, "schedule": {"warmup_steps": max(1, settings.steps // 10)},
            "steps": settings.steps, "seed": job.seed, "out_dir": str(run_dir), "log_every": 25,
            "checkpoint_every": settings.checkpoint_every,
            "precision": job.precision, "progress": False, "tensorboard": False,
        },
    )  # fmt: skip
    result = train(config, resume=same_job)
    model = AudioLanguageModel.from_pretrained(result.model_dir).eval()
    records = read_manifest(job.test_manifest)
    generation = GenerationSettings(
        batch_size=settings.eval_batch_size, max_new_tokens=settings.max_new_tokens, progress=False
    )
    evaluated = evaluate_records(
        model, records, generation, modality=True, cache=FeatureCache(job.cache_dir, model)
    )
    evaluated.update(arm=job.arm, seed=job.seed, checkpoint=str(result.model_dir))
    (run_dir / EVAL_FILE).write_text(json.dumps(evaluated, indent=1) + "\n")
    params = result.summary["params"]
    del model
    gc.collect()
    summary = {
        "arm": job.arm,
        "seed": job.seed,
        "params_total": params["adapter"]["total"],
        "params_active": params["adapter"]["active"],
        "llm_params": params["llm"]["total"],
        "train_seconds": result.summary["train_seconds"],
        "final_loss": result.summary["final_loss"],
        "eval_seconds": evaluated["seconds"],
        "model_dir": str(result.model_dir),
        "eval": str(run_dir / EVAL_FILE),
        # this worker's peak so far (workers are reused, so an upper bound for this job); KiB on Linux
        "worker_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    (run_dir / RESULT_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or torn (a run killed while writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def faster_precision(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], candidates: Sequence[str], repeats: int = 3
) -> dict[str, Any]:
    """Time a few training steps (forward, backward, no update) of ``model`` on ``batch`` under each candidate
    precision, interleaved, one thread (as the workers run), and return the faster with the medians.

    Why on the workload and not only on a probe matmul: bf16 being native is necessary, not sufficient. On a
    Zen 4 EPYC (AVX512-BF16) a 256x512x512 bf16 matmul is 2.2x faster than fp32, yet the demo's small LLM
    trained 1.3x *slower* under bf16 autocast (the casts around its narrow matmuls cost more than they save)."""
    if len(candidates) == 1:
        return {"chosen": candidates[0], "seconds": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {c: [] for c in candidates}
    try:
        for rep in range(repeats + 1):
            for precision in candidates:
                begin = time.perf_counter()
                with autocast(precision, "cpu"):
                    out = model(**batch)
                (out.loss + out.aux_loss).backward()
                model.zero_grad(set_to_none=True)
                if rep:  # the first round warms up both
                    times[precision].append(time.perf_counter() - begin)
    finally:
        torch.set_num_threads(threads)
    medians = {c: statistics.median(t) for c, t in times.items()}
    # the first candidate (fp32) unless another is clearly faster: a coin flip between two equal timings
    # would make reruns on the same machine train in different precisions
    chosen = min(medians, key=medians.get)
    if medians[chosen] > PRECISION_MARGIN * medians[candidates[0]]:
        chosen = candidates[0]
    return {
        "chosen": chosen,
        "seconds": {c: round(v, 4) for c, v in medians.items()},
        "margin": PRECISION_MARGIN,
    }


def _one_thread_worker() -> None:
    torch.set_num_threads(1)


def default_workers() -> int:
    """One worker per core this process may run on."""
    return usable_cores()


def run_arms(
    jobs: Sequence[Any],
    workers: int,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    runner: Callable[[Any], dict[str, Any]] = run_arm,
) -> list[dict[str, Any]]:
    """Run ``runner(job)`` (default :func:`run_arm`; a picklable top-level function) for ``jobs``; with ``workers``
    > 1 in that many single-threaded processes (``spawn``: a fresh interpreter, no inherited OpenMP state).
    Results come back in the order of ``jobs``; ``on_done`` sees each as it ends."""
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(runner(job))
            if on_done:
                on_done(results[-1])
        return results
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=mp.get_context("spawn"),
        initializer=_one_thread_worker,
    ) as pool:
        futures = [pool.submit(runner, job) for job in jobs]
        if on_done:
            for future in futures:
                future.add_done_callback(lambda f: on_done(f.result()) if f.exception() is None else None)
        return [f.result() for f in futures]
