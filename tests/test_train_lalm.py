"""Training the tiny LALM end to end: feature cache equivalence and reuse, exact resume, eval on a foreign
manifest, through the same functions ``audiomoe train`` / ``audiomoe eval`` call."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomoe.adapters import kernels
from audiomoe.cli.main import main as cli
from audiomoe.data.manifest import read_manifest
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.feature_cache import FeatureCache, encoder_identity
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training import checkpoint as ckpt
from audiomoe.training.config import load_train_config
from audiomoe.training.run import train

NOTES = {"piano": 220.0, "flute": 660.0, "organ": 330.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 tone clips of 0.5-1.2 s labelled with an instrument, as a native manifest."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        label = list(NOTES)[i % 3]
        seconds = 0.5 + 0.1 * (i % 8)
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * NOTES[label] * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / f"clip{i}.wav", wave.astype(np.float32), 16000)
        lines.append(json.dumps({"key": f"k{i}", "audio": f"clip{i}.wav", "task": "instrument",
                                 "instruction": "Which instrument is playing?", "answer": label,
                                 "attributes": {"category": "music"}, "duration": seconds}))  # fmt: skip
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_model(adapter: str = "moe") -> AudioLanguageModel:
    return AudioLanguageModel(
        build_preset("tiny", adapter, adapter={"num_experts": 4, "top_k": 2} if adapter == "moe" else {})
    )


def test_cached_features_give_the_same_loss_and_are_reused(corpus: Path, tmp_path: Path) -> None:
    model = tiny_model()
    records = read_manifest(corpus / "train.jsonl")
    cache = FeatureCache(tmp_path, model, dtype="float32")
    assert cache.ensure([r.audio for r in records], progress=False) == 12
    direct = RecordBatcher(records, model.processor).collate([0, 5, 7])
    cached = RecordBatcher(records, model.processor, cache).collate([0, 5, 7])
    assert "audio_features" in direct and "encoder_hidden" in cached and "audio_features" not in cached
    assert torch.equal(direct["input_ids"], cached["input_ids"]) and torch.equal(
        direct["labels"], cached["labels"]
    )
    with torch.no_grad():
        assert model(**cached).loss.item() == pytest.approx(model(**direct).loss.item(), rel=1e-5)

    # Reused: by another process (fresh object), by another adapter on the same encoder, and for the same
    # content under another file name.
    shutil.copy(corpus / "clip3.wav", tmp_path / "renamed.wav")
    again = FeatureCache(tmp_path, tiny_model("linear"), dtype="float32")
    assert again.dir == cache.dir and len(again) == 12
    assert again.ensure([r.audio for r in records] + [str(tmp_path / "renamed.wav")], progress=False) == 0
    # A saved and reloaded model finds its features again (identity = what the encoder is, not where it came from).
    model.save_pretrained(tmp_path / "saved")
    assert encoder_identity(AudioLanguageModel.from_pretrained(tmp_path / "saved").encoder) == cache.identity
    # Another encoder (other weights) never reads these features.
    other = AudioLanguageModel(build_preset("tiny", "linear", seed=1))
    assert encoder_identity(other.encoder) != encoder_identity(model.encoder)
    assert FeatureCache(tmp_path, other).dir != cache.dir


def test_the_training_loader_reads_cached_features_without_decoding_a_clip(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiomoe.training.loading import decode_batch

    model = tiny_model()
    records = read_manifest(corpus / "train.jsonl")
    cache = FeatureCache(tmp_path, model, dtype="float32")
    cache.ensure([r.audio for r in records], progress=False)
    cached, direct = RecordBatcher(records, model.processor, cache), RecordBatcher(records, model.processor)
    assert cached.reads_cache and not direct.reads_cache

    def no_decoding(record):  # the cache holds the encoder outputs: decoding would only cost time
        raise AssertionError(f"decoded {record.audio}")

    monkeypatch.setattr(cached, "load", no_decoding)
    batch, reasons = decode_batch(cached, [0, 5, 7])
    assert reasons == [] and torch.equal(batch["input_ids"], cached.collate([0, 5, 7])["input_ids"])
    assert "encoder_hidden" in batch


def test_cache_refuses_a_trainable_encoder(tmp_path: Path) -> None:
    model = AudioLanguageModel(build_preset("tiny", "linear", freeze={"encoder": False}))
    with pytest.raises(ValueError, match="frozen encoder"):
        FeatureCache(tmp_path, model)


def test_train_resume_and_eval_on_a_foreign_manifest(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [
        f"data.train=[{corpus / 'train.jsonl'}]",
        f"data.feature_cache={tmp_path / 'cache'}",
        "data.batch_size=4",
        f"out_dir={run}",
        "steps=4",
        "checkpoint_every=2",
        "progress=false",
        "model.preset=tiny",
        "model.adapter={type: moe, num_experts: 4, top_k: 2}",
        "optim.lr=3e-3",
    ]
    config = load_train_config(None, overrides)
    result = train(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]  # (kernel_choice and dev records carry no loss)
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and all(r["aux_loss"] > 0 for r in losses)
    assert (run / "config.yaml").is_file() and result.summary["params"]["adapter"]["active"] > 0

    # "Kill" after the step-2 checkpoint: drop the last one; the resumed run must retrace the curve exactly.
    shutil.rmtree(ckpt.latest_checkpoint(run / "checkpoints"))
    assert cli(["train", "--config", str(run / "config.yaml"), "--resume"]) == 0
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [
        r for r in resumed if "loss" in r
    ]  # each process says its kernel choices again: not train records
    assert resumed == [
        {**r, "frames_per_s": again["frames_per_s"], "train_seconds": again["train_seconds"]}
        for r, again in zip(losses, resumed, strict=True)
    ]

    # Someone else's manifest (messages schema, relative paths) evaluates without code changes.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    rows = []
    for i, label in ((0, "piano"), (1, "flute")):
        shutil.copy(corpus / f"clip{i}.wav", foreign / f"x{i}.wav")
        rows.append(json.dumps({"messages": [{"role": "user", "content": "<audio>Which instrument is playing?"},
                                             {"role": "assistant", "content": label}],
                                "audios": [f"x{i}.wav"], "task": "instrument"}))  # fmt: skip
    (foreign / "m.jsonl").write_text("\n".join(rows) + "\n")
    report_path = tmp_path / "eval.json"
    assert cli(["eval", "--checkpoint", str(run), "--manifest", str(foreign / "m.jsonl"), "--json", str(report_path),
                "--max-new-tokens", "6"]) == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    assert report["n"] == 2 and set(report["tasks"]) == {"instrument"} and "music" in report["groups"]
    assert len(report["predictions"]) == 2


def test_training_updates_sigmoid_router_bias_and_tracks_gradient_conflict(
    corpus: Path, tmp_path: Path
) -> None:
    """The trainer attaches the aux-loss-free bias step to the optimizer, and measures gradient conflict between
    audio categories every ``grad_conflict_every`` steps into metrics.jsonl."""
    lines = (corpus / "train.jsonl").read_text().splitlines()
    mixed = [line.replace('"music"', '"sound"') if i % 2 else line for i, line in enumerate(lines)]
    manifest = corpus / "mixed.jsonl"
    manifest.write_text("\n".join(mixed) + "\n")
    run = tmp_path / "run"
    config = load_train_config(
        None,
        [
            f"data.train=[{manifest}]",
            "data.batch_size=4",
            f"out_dir={run}",
            "steps=4",
            "progress=false",
            "model.preset=tiny",
            "model.adapter={type: moe, num_experts: 4, top_k: 2, router: sigmoid, bias_update_rate: 0.01}",
            "grad_conflict_every=2",
        ],
    )
    kernels.reset_auto_choices()  # the choices are per process: earlier tests may have met these shapes
    result = train(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grad = [r for r in records if r.get("split") == "grad"]
    assert [r["step"] for r in grad] == [2, 4]
    # kernel: auto says what it chose at the step that first met a shape class: at step 1 the gate_up and the
    # down projection; later steps where a batch's frame count fell in a new power-of-two class, or where the
    # gradient-conflict probe (fp32, outside autocast) met one
    chosen = [r for r in records if r.get("split") == "kernel_choice"]
    assert chosen[0]["step"] == 1 and len(chosen[0]["choices"]) == 2
    assert all(r["choices"] for r in chosen) and len({r["step"] for r in chosen}) == len(chosen)
    assert all(c["backward"] and c["kernel"] in ("loop", "grouped_mm") for r in chosen for c in r["choices"])
    assert all(0.0 <= r["grad/conflict_ratio"] <= 1.0 and "grad/cos/sound|music" in r for r in grad)
    bias = AudioLanguageModel.from_pretrained(result.model_dir).adapter.moe.gate.e_score_correction_bias
    assert bias.abs().sum() > 0  # 4 steps x rate 0.01 moved it
    assert (
        set(bias.abs().unique().tolist()) <= {0.0, 0.01, 0.02, 0.03, 0.04} or bias.abs().max() <= 0.04 + 1e-6
    )


def test_feature_cache_benchmark_runs_from_the_cli(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "fc.json"
    argv = [
        "bench",
        "feature-cache",
        "--manifest",
        str(corpus / "train.jsonl"),
        "--preset",
        "tiny",
        "--llm",
        "preset",
    ]
    assert cli([*argv, "--batch-size", "2", "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cache_fill_clips"] == 8 and set(result["median_step_seconds"]) == {"recompute", "cache"}
    assert result["speedup"] > 0 and result["steps"] == 2


def test_activation_checkpointing_trains_the_same_curve(corpus: Path, tmp_path: Path) -> None:
    curves = []
    for on in ("false", "true"):
        run = tmp_path / on
        overrides = [
            f"data.train=[{corpus / 'train.jsonl'}]",
            "data.batch_size=4",
            f"out_dir={run}",
            "steps=2",
            "progress=false",
            "precision=fp32",
            "model.preset=tiny",
            f"train.activation_checkpointing={on}",
        ]
        train(load_train_config(None, overrides))
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curves.append([r["loss"] for r in records if "loss" in r])
    assert len(curves[0]) == 2 and curves[1] == pytest.approx(curves[0], rel=1e-5)
