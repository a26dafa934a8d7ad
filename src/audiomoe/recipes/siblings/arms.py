"""The siblings recipe's arms at matched active parameters, and one (arm, seed) job: train, then evaluate.

Architecture arms (all with the dense ``mlp``'s active parameters per token, ±2%): ``mlp`` (FFN), ``moe`` (the
single-layer MoE-Adapter: E experts, top-k, no shared expert), ``moue-per-block`` (L blocks over their own
experts) and ``moue-staggered`` (the same pool and stride, windows twice as wide: MoUE-style). ``mlp-narrow`` is the
dense FFN with the MoE's expert width, the source of ``moe-upcycled``.
"""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiomoe.adapters.moue import moue_preset
from audiomoe.adapters.presets import count_parameters, matched_moe_config, routing_summary
from audiomoe.config import from_dict, to_dict
from audiomoe.data.manifest import read_manifest
from audiomoe.evaluation.evaluate import evaluate_records
from audiomoe.evaluation.runner import GenerationSettings
from audiomoe.models.feature_cache import FeatureCache
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.recipes.demo.arms import EVAL_FILE
from audiomoe.recipes.siblings.settings import SiblingsSettings
from audiomoe.training.config import TrainConfig
from audiomoe.training.run import train


def _solve_width(config: dict[str, Any], field: str, target: int) -> dict[str, Any]:
    """``config`` with ``field`` set so its active parameters are closest to ``target`` (they are affine in it)."""

    def active(width: int) -> int:
        return count_parameters({**config, field: width})["active_params"]

    slope = active(2) - active(1)
    return {**config, field: max(1, round((target - active(1)) / slope) + 1)}


def architecture_adapters(
    settings: SiblingsSettings, input_dim: int, output_dim: int
) -> dict[str, dict[str, Any]]:
    front = {"input_dim": input_dim, "output_dim": output_dim, "downsample": "stack",
             "downsample_factor": settings.demo.downsample_factor}  # fmt: skip
    mlp = {"type": "mlp", **front, "mlp_type": "ffn", "hidden_dim": settings.mlp_hidden}
    target = count_parameters(mlp)["active_params"]
    moe = to_dict(matched_moe_config(mlp, num_experts=settings.experts, top_k=settings.top_k, num_shared=0,
                                     expert_type="ffn"))  # fmt: skip
    narrow = {**mlp, "hidden_dim": moe["expert_hidden_dim"]}
    arms = {"mlp": mlp, "moe": moe, "mlp-narrow": narrow}
    for kind in ("per_block", "staggered"):
        topology = moue_preset(kind, settings.moue_blocks, settings.moue_experts_per_block)
        base = {**front, **topology, "top_k": settings.moue_top_k, "expert_type": "ffn"}
        arms[f"moue-{kind.replace('_', '-')}"] = _solve_width(base, "expert_hidden_dim", target)
    return arms


def describe_adapters(adapters: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: total / active parameters and, for expert pools, pool size, virtual width and routing paths."""
    return {name: {**count_parameters(a), **routing_summary(a)} for name, a in adapters.items()}


def strip_dims(adapter: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in adapter.items() if k not in ("input_dim", "output_dim")}


@dataclass(frozen=True)
class SiblingJob:
    """One (arm, seed) run (picklable): ``train`` is the TrainConfig as a dict; the test split is evaluated
    with the modality gap into ``run_dir/eval.json``."""

    arm: str
    seed: int
    train: dict[str, Any]
    test_manifest: str
    cache_dir: str
    eval_batch_size: int
    max_new_tokens: int
    reuse: bool = False  # a finished run (its eval.json) is read back instead of trained again


def run_job(job: SiblingJob) -> dict[str, Any]:
    run_dir = Path(job.train["out_dir"])
    if not (job.reuse and (run_dir / EVAL_FILE).is_file()):
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a fresh run: the report must describe this one
        train(from_dict(TrainConfig, job.train))
        model = AudioLanguageModel.from_pretrained(run_dir / "model").eval()
        generation = GenerationSettings(batch_size=job.eval_batch_size, max_new_tokens=job.max_new_tokens,
                                        progress=False)  # fmt: skip
        evaluated = evaluate_records(model, read_manifest(job.test_manifest), generation, modality=True,
                                     cache=FeatureCache(job.cache_dir, model))  # fmt: skip
        evaluated.update(arm=job.arm, seed=job.seed, checkpoint=str(run_dir / "model"))
        (run_dir / EVAL_FILE).write_text(json.dumps(evaluated, indent=1) + "\n")
        del model
        gc.collect()
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    objective_terms = {k: v for k, v in metrics[-1].items() if k.startswith("objective/")} if metrics else {}
    return {
        "arm": job.arm,
        "seed": job.seed,
        "train_seconds": summary["train_seconds"],
        "final_loss": summary["final_loss"],
        "eval_seconds": json.loads((run_dir / EVAL_FILE).read_text())["seconds"],
        "model_dir": str(run_dir / "model"),
        "eval": str(run_dir / EVAL_FILE),
        "last_objective_terms": objective_terms,
    }
