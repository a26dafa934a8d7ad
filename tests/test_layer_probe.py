"""Layer probes: every hidden state of an encoder, a logistic regression per (task, state), scored on held-out
clips; on tones whose pitch class is plain in the log-mel input, the probes find it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from audiomoe.analysis.layer_probe import all_states_encoder, probe_layers
from audiomoe.cli.main import main as cli
from audiomoe.data.audio import save_audio
from audiomoe.data.manifest import read_manifest

TINY_WHISPER = {
    "d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 16,
    "max_source_positions": 50, "max_target_positions": 16, "vocab_size": 100, "pad_token_id": 0,
    "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
}  # fmt: skip


def tone_manifest(folder: Path, name: str, count: int, seed: int) -> Path:
    """``count`` half-second tones, low (200-300 Hz) or high (2-3 kHz), as a ``pitch`` task manifest."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        label = ("low", "high")[i % 2]
        freq = rng.uniform(200, 300) if label == "low" else rng.uniform(2000, 3000)
        t = np.arange(8000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
        path = folder / f"{name}-{i}.wav"
        save_audio(path, wave.astype(np.float32))
        lines.append(
            {
                "key": f"{name}-{i}",
                "audio": str(path),
                "task": "pitch",
                "instruction": "Pitch level?",
                "answer": label,
            }
        )
    manifest = folder / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def test_every_state_is_probed_and_an_audible_attribute_is_found(tmp_path: Path, capsys) -> None:
    encoder, states = all_states_encoder({"type": "whisper", "config": TINY_WHISPER})
    assert states == 3 and encoder.hidden_size == 3 * 32  # embedding output + 2 blocks
    train = tone_manifest(tmp_path, "train", 24, seed=0)
    test = tone_manifest(tmp_path, "test", 12, seed=1)
    result = probe_layers(
        {"type": "whisper", "config": TINY_WHISPER}, read_manifest(train), read_manifest(test)
    )
    entry = result["tasks"]["pitch"]
    assert result["states"] == 3 and len(entry["accuracy"]) == 3
    assert entry["chance"] == 0.5 and entry["train_items"] == 24 and entry["test_items"] == 12
    assert max(entry["accuracy"]) >= 0.9 and entry["accuracy"][entry["best_state"]] == max(entry["accuracy"])

    out = tmp_path / "probe.json"
    assert (
        cli(
            [
                "probe-layers",
                "--train",
                str(train),
                "--test",
                str(test),
                "--encoder-path",
                "",
                "--json",
                str(out),
            ]
        )
        == 2
    )  # fmt: skip  (no encoder.path and no config: one clear error)
    assert "encoder" in capsys.readouterr().err
