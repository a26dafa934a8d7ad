"""Machine-chosen precision and threads (audiomoe.runtime) and ``audiomoe env``.

What the machine decides is forced here through ``AUDIOMOE_BF16_NATIVE`` / ``AUDIOMOE_THREADS``, through flags
torch and oneDNN read at start-up (in subprocesses), or by monkeypatching the flags and the probe, so every
assertion holds on any CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomoe import runtime
from audiomoe.cli.main import main as cli
from audiomoe.config import ConfigError
from audiomoe.training.config import TrainConfig, load_train_config
from audiomoe.training.run import train
from audiomoe.training.stream import BatchStream
from audiomoe.training.trainer import Trainer

ENV_KEYS = {
    "audiomoe", "python", "torch", "transformers", "peft", "platform", "cpu_model", "cpu_capability", "cores",
    "device", "cuda", "bf16_native", "default_precision", "threads", "omp_wait_policy", "memory_gib",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No user overrides leak in, the probe's disk cache lives in this test's directory, and the thread count
    the CLI sets is undone."""
    for key in (runtime.BF16_ENV, runtime.THREADS_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    runtime._cpu_bf16_native.cache_clear()
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    runtime._cpu_bf16_native.cache_clear()


def test_auto_precision_follows_the_override_and_explicit_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.BF16_ENV, "0")
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setenv(runtime.BF16_ENV, "1")
    assert runtime.resolve_precision("auto", "cpu") == "bf16"
    assert [runtime.resolve_precision(p, "cpu") for p in ("fp32", "fp16")] == ["fp32", "fp16"]
    with pytest.raises(ValueError, match="not one of"):
        runtime.resolve_precision("fp8", "cpu")
    monkeypatch.setenv(runtime.BF16_ENV, "yes")
    with pytest.raises(ValueError, match="AUDIOMOE_BF16_NATIVE"):
        runtime.bf16_native("cpu")


def test_autocast_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with runtime.autocast("bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    with runtime.autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32
    monkeypatch.setenv(runtime.BF16_ENV, "0")
    with runtime.autocast("auto", "cpu"):
        assert layer(x).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        runtime.autocast("fp16", "cpu")


def test_flags_gate_the_probe_and_its_verdict_is_kept_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulated capabilities never run the probe; where the flags allow bf16, a slow bf16 probe says no, and the
    next process reads that verdict instead of probing again."""
    assert not runtime.flags_allow_bf16("AVX2", True)
    assert not runtime.flags_allow_bf16("DEFAULT", True)
    assert not runtime.flags_allow_bf16("AVX512", False)
    assert runtime.flags_allow_bf16("AVX512", True)

    probes: list[float] = []

    def slow_bf16() -> float:
        probes.append(7.6)  # bf16 emulated: 7.6x slower than fp32
        return 7.6

    monkeypatch.setattr(runtime, "probe_bf16_ratio", slow_bf16)
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: ("AVX2", False))
    assert runtime.bf16_native("cpu") is False and probes == []

    runtime._cpu_bf16_native.cache_clear()
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: ("AVX512", True))
    assert runtime.bf16_native("cpu") is False and probes == [7.6]
    (verdict,) = json.loads((runtime.cache_dir() / "bf16-probe.json").read_text()).values()
    assert verdict == {"native": False, "bf16_over_fp32": 7.6, "shape": list(runtime.PROBE_SHAPE)}

    runtime._cpu_bf16_native.cache_clear()  # a new process: the disk answers, no second probe
    assert runtime.bf16_native("cpu") is False and probes == [7.6]


def test_the_probe_measures_a_ratio() -> None:
    ratio = runtime.probe_bf16_ratio(shape=(32, 64, 64), repeats=2)
    assert 0 < ratio < float("inf")


def _env_json(tmp_path: Path, **env: str) -> dict:
    """``audiomoe env --json`` in a fresh interpreter (flags that torch and oneDNN read at start-up)."""
    out = tmp_path / "e.json"
    child = {k: v for k, v in os.environ.items() if k not in (runtime.BF16_ENV, "OMP_WAIT_POLICY")}
    subprocess.run(
        [sys.executable, "-m", "audiomoe.cli.main", "env", "--json", str(out)],
        check=True,
        env={**child, **env},
        capture_output=True,
        timeout=120,
    )
    return json.loads(out.read_text())


def test_env_reports_the_machine_and_the_overridden_choice(tmp_path: Path) -> None:
    info = _env_json(tmp_path, AUDIOMOE_BF16_NATIVE="0", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert set(info) >= ENV_KEYS
    assert info["bf16_native"] is False and info["default_precision"] == "fp32"
    assert info["omp_wait_policy"] is None  # libgomp's default: the policy is the thread count
    assert info["torch"] == torch.__version__ and info["threads"] >= 1
    assert info["cores"]["usable"] >= 1 and info["cpu_model"]


def test_a_simulated_avx2_machine_gets_fp32_from_its_flags(tmp_path: Path) -> None:
    """No override: torch and oneDNN are told the CPU has AVX2 only, so the flags alone say bf16 is emulated."""
    info = _env_json(
        tmp_path, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", XDG_CACHE_HOME=str(tmp_path / "xdg")
    )
    assert info["cpu_capability"] == "AVX2" and info["mkldnn_bf16"] is False
    assert info["bf16_native"] is False and info["default_precision"] == "fp32"
    assert not (tmp_path / "xdg" / "audiomoe" / "bf16-probe.json").exists()  # decided without a probe


def test_the_probe_catches_bf16_that_the_flags_allow_but_the_cpu_emulates(tmp_path: Path) -> None:
    """oneDNN limited to AVX-512 without its bf16 instructions still reports bf16 support (as a Skylake Xeon
    does); the probe must find bf16 slower and say no."""
    cache = tmp_path / "xdg"
    info = _env_json(tmp_path, ONEDNN_MAX_CPU_ISA="AVX512_CORE", XDG_CACHE_HOME=str(cache))
    assert info["bf16_native"] is False and info["default_precision"] == "fp32"
    if info["mkldnn_bf16"] and info["cpu_capability"] not in runtime.EMULATED_CAPABILITIES:
        (verdict,) = json.loads((cache / "audiomoe" / "bf16-probe.json").read_text()).values()
        assert verdict["native"] is False and verdict["bf16_over_fp32"] > 1.0


def _stream() -> BatchStream:
    x = torch.randn(8, 4)
    return BatchStream(lambda epoch: [[0, 1, 2, 3], [4, 5, 6, 7]], lambda idx: {"x": x[list(idx)]})


@dataclass
class _Out:
    loss: torch.Tensor
    aux_loss: torch.Tensor


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> _Out:
        loss = self.layer(x).float().pow(2).mean()
        return _Out(loss, torch.zeros(()))


@pytest.mark.parametrize(("native", "expected"), [("0", "fp32"), ("1", "bf16")])
def test_train_config_defaults_to_auto_and_the_run_records_what_ran(
    native: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(runtime.BF16_ENV, native)
    assert TrainConfig().precision == "auto"
    config = load_train_config(
        None, [f"out_dir={tmp_path}", "steps=1", "progress=false", "tensorboard=false"]
    )
    trainer = Trainer(config, _Tiny(), _stream())
    assert trainer.precision == expected and trainer.config.precision == expected
    assert not trainer.scaler.is_enabled()
    trainer.fit()
    assert f"precision: {expected}" in (tmp_path / "config.yaml").read_text()


def test_threads_follow_explicit_values_then_the_env_then_the_idle_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(runtime.THREADS_ENV, "1")
    assert runtime.configure_threads() == 1 and torch.get_num_threads() == 1
    assert runtime.configure_threads(2) == 2 and torch.get_num_threads() == 2
    assert runtime.choose_threads("3") == 3
    monkeypatch.setenv(runtime.THREADS_ENV, "0")
    with pytest.raises(ValueError, match="AUDIOMOE_THREADS"):
        runtime.choose_threads()
    with pytest.raises(ValueError, match="positive integer"):
        runtime.choose_threads("many")
    monkeypatch.delenv(runtime.THREADS_ENV)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    # one core of headroom: (idle cores at start-up, torchrun ranks on this host) -> threads per rank
    cases = [(4.0, "1", 3), (2.6, "1", 2), (1.1, "1", 1), (0.2, "1", 1), (3.9, "2", 1), (6.0, "1", 3)]
    for idle, ranks, expected in cases:
        monkeypatch.setattr(runtime, "idle_cores", lambda seconds, idle=idle: idle)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
        assert runtime.choose_threads() == expected, (idle, ranks)


def test_idle_cores_reads_this_process_cores() -> None:
    assert 0.0 <= runtime.idle_cores(0.02) <= runtime.usable_cores()


def test_bf16_training_evaluates_its_dev_set_and_eval_runs_in_bf16(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Dev evaluation and ``audiomoe eval`` extract features inside a bf16 autocast; the features must still be
    computed in fp32 (transformers' Whisper extractor fails on bf16), and the run records what it ran with."""
    monkeypatch.setenv(runtime.BF16_ENV, "1")
    rows = []
    for i in range(4):
        t = np.arange(8000) / 16000
        sf.write(
            tmp_path / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 16000
        )
        rows.append(json.dumps({"key": f"k{i}", "audio": f"c{i}.wav", "task": "instrument", "duration": 0.5,
                                "instruction": "Which instrument?", "answer": "piano"}))  # fmt: skip
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    manifest, run = tmp_path / "m.jsonl", tmp_path / "run"
    overrides = [f"data.train=[{manifest}]", f"data.dev=[{manifest}]", "data.batch_size=2", "data.max_dev_items=2",
                 f"out_dir={run}", "steps=1", "progress=false", "tensorboard=false", "model.preset=tiny"]  # fmt: skip
    result = train(load_train_config(None, overrides))
    assert result.summary["precision"] == "bf16" and result.summary["threads"] >= 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "dev" and "dev_score" in r for r in records)

    report = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(run), "--manifest", str(manifest), "--json", str(report),
            "--max-new-tokens", "2", "--precision", "bf16", "--threads", "1"]  # fmt: skip
    assert cli(args) == 0
    assert json.loads(report.read_text())["runtime"] == {"precision": "bf16", "threads": 1, "device": "cpu"}
