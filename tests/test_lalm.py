"""AudioLanguageModel on the tiny preset: forward/backward per adapter, placeholders, generation, freezing and
LoRA, save/load, local-directory encoder and LLM, precomputed encoder features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiomoe.adapters import ADAPTERS
from audiomoe.config import ConfigError
from audiomoe.models.lalm import AudioLanguageModel, LALMConfig
from audiomoe.models.presets import build_preset

PROMPTS = ["<audio> What do you hear?", "Compare <audio> and <audio>."]
ANSWERS = ["a dog barking", "the second is louder"]


def _clips(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 24000)]


def _model(adapter: str = "linear", **fields) -> AudioLanguageModel:
    return AudioLanguageModel(build_preset("tiny", adapter_type=adapter, **fields))


@pytest.fixture(scope="module")
def model() -> AudioLanguageModel:
    return _model()


@pytest.fixture(scope="module")
def batch(model: AudioLanguageModel) -> dict[str, torch.Tensor]:
    return model.processor(PROMPTS, _clips(), answers=ANSWERS)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_forward_backward_every_adapter(adapter: str) -> None:
    model = _model(adapter, aux_loss_weight=0.5)
    batch = model.processor(PROMPTS, _clips(), answers=ANSWERS)
    model.train()
    out = model(**batch)
    supervised = int((batch["labels"][:, 1:] != -100).sum())  # logits only where the next token has a label
    assert out.logits.shape == (supervised, model.llm.config.vocab_size)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.aux_loss)
    # A random LM is close to uniform over the 259-token vocabulary.
    assert abs(out.lm_loss.item() - np.log(259)) < 1.5
    out.loss.backward()
    adapter_grads = [p.grad for p in model.adapter.parameters() if p.requires_grad]
    assert adapter_grads and all(g is not None for g in adapter_grads)
    assert sum(g.abs().sum().item() for g in adapter_grads) > 0
    assert all(p.grad is None for p in model.encoder.parameters())  # frozen encoder: no graph at all
    n_tokens = model.audio_token_lengths(batch["audio_lengths"]).sum()
    assert (
        int(out.adapter_output.mask.sum())
        == int(n_tokens)
        == int((batch["input_ids"] == model.audio_token_id).sum())
    )


def test_the_loss_from_supervised_logits_only_is_the_full_logits_loss(batch, monkeypatch) -> None:
    """With labels the LLM projects only the positions whose next token is supervised; loss, gradients and
    those logits equal the all-positions computation's (transformers' own loss over (B, L, V) logits)."""
    from transformers import Qwen2ForCausalLM, WhisperForCausalLM

    from audiomoe.models import lalm

    model = _model("moe")
    model.eval()  # no dropout: both passes see the same network
    results = {}
    for only in (True, False):
        model.zero_grad()
        out = model(**batch, supervised_logits_only=only)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[only] = (out, grads)
    (fast, fast_grads), (full, full_grads) = results[True], results[False]
    next_supervised = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] != -100
    assert full.logits.shape == (*batch["input_ids"].shape, model.llm.config.vocab_size)
    assert fast.logits.shape == (int(next_supervised.sum()), model.llm.config.vocab_size)
    assert 0 < fast.logits.shape[0] < batch["input_ids"].numel() // 2  # most positions are audio and prompt
    torch.testing.assert_close(fast.logits, full.logits[next_supervised], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.lm_loss, full.lm_loss, rtol=1e-6, atol=0)
    assert len(fast_grads) == len(full_grads) > 0
    for a, b in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # an LLM whose forward has no logits_to_keep (transformers' WhisperForCausalLM) takes the full path
    assert lalm._keeps_logits_by_mask(Qwen2ForCausalLM) and not lalm._keeps_logits_by_mask(WhisperForCausalLM)
    monkeypatch.setattr(lalm, "_keeps_logits_by_mask", lambda cls: False)
    with torch.no_grad():
        fallback = model(**batch)
    assert fallback.logits.shape == full.logits.shape
    torch.testing.assert_close(fallback.loss, full.loss, rtol=0, atol=0)


def test_placeholder_count_mismatch_is_a_clear_error(model, batch) -> None:
    ids = batch["input_ids"].clone()
    first = (ids == model.audio_token_id).nonzero()[0]
    ids[first[0], first[1]] = 65
    with pytest.raises(ValueError, match="placeholder tokens but the 3 clip"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="no audio was given"):
        model(batch["input_ids"], batch["attention_mask"])


def test_precomputed_encoder_hidden_gives_the_same_loss(model, batch) -> None:
    model.train()  # a frozen encoder stays in eval mode, so a feature cache matches the live encoder
    assert not model.encoder.training and model.adapter.training
    with torch.no_grad():
        full = model(**batch)
        hidden, mask = model.encode_audio(batch["audio_features"], batch["audio_lengths"])
        cached = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            encoder_hidden=hidden,
            encoder_mask=mask,
        )
    torch.testing.assert_close(cached.loss, full.loss, rtol=0, atol=0)
    torch.testing.assert_close(cached.logits, full.logits, rtol=0, atol=0)
    model.eval()


def test_padding_side_does_not_change_logits(model) -> None:
    right = model.processor(PROMPTS, _clips(), padding_side="right")
    left = model.processor(PROMPTS, _clips(), padding_side="left")
    with torch.no_grad():
        lr, ll = model(**right).logits, model(**left).logits
    for b in range(2):
        torch.testing.assert_close(
            lr[b][right["attention_mask"][b].bool()],
            ll[b][left["attention_mask"][b].bool()],
            atol=1e-4,
            rtol=1e-4,
        )


def test_generate_batched_greedy_matches_single_and_a_no_cache_loop(model) -> None:
    clips = _clips()
    batch = model.processor(PROMPTS, clips)
    answers = model.generate(**batch, max_new_tokens=6)
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    single = model.generate(**model.processor(PROMPTS[:1], clips[:1]), max_new_tokens=6)
    assert single[0] == answers[0]
    # Greedy with the KV cache equals argmax decoding by full forward passes (no cache).
    one = model.processor(PROMPTS[:1], clips[:1])
    ids, mask = one["input_ids"], one["attention_mask"]
    with torch.no_grad():
        for _ in range(6):
            logits = model(
                ids, mask, audio_features=one["audio_features"], audio_lengths=one["audio_lengths"]
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert model.processor.decode(ids[:, one["input_ids"].shape[1] :])[0] == single[0]
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=4, do_sample=True, temperature=0.8, top_p=0.9)
    assert len(sampled) == 2 and all(isinstance(a, str) for a in sampled)


def test_frozen_unchanged_lora_and_adapter_change_after_a_step() -> None:
    model = _model("mlp", freeze={"llm": True}, lora={"llm": True, "encoder": True, "r": 4})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or ".lora_" in n for n in trainable)
    assert any(n.startswith("llm.") and ".lora_B." in n for n in trainable)
    assert any(n.startswith("encoder.") and ".lora_B." in n for n in trainable)
    summary = model.param_summary()
    lora = {c: sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n and n.startswith(c)) for c in
            ("encoder", "llm")}  # fmt: skip
    assert (
        summary["llm"]["trainable"] == lora["llm"] > 0
        and summary["encoder"]["trainable"] == lora["encoder"] > 0
    )
    assert summary["all"]["trainable"] == lora["llm"] + lora["encoder"] + summary["adapter"]["total"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**model.processor(PROMPTS, _clips(), answers=ANSWERS)).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name in trainable and (".lora_B." in name or name.startswith("adapter.")):
            assert changed, name
        if name not in trainable:
            assert not changed, name


def test_regex_overrides_and_bad_regex() -> None:
    model = _model(
        freeze={"llm": True, "train_regex": [r"^llm\.model\.norm\."], "freeze_regex": [r"adapter\..*bias"]}
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "llm.model.norm.weight" in trainable
    assert not any(n.startswith("llm.") and n != "llm.model.norm.weight" for n in trainable)
    assert not any(n.startswith("adapter.") and n.endswith("bias") for n in trainable)
    with pytest.raises(ConfigError, match="match no parameter"):
        _model(freeze={"train_regex": ["nothing_here"]})


def test_save_load_round_trip_identical_logits(tmp_path, batch) -> None:
    model = _model("moe")
    model.save_pretrained(tmp_path / "m")
    loaded = AudioLanguageModel.from_pretrained(tmp_path / "m")
    assert loaded.config.adapter == model.config.adapter
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=0)


def test_local_directory_encoder_and_llm_lora_checkpoint_stores_only_trained(tmp_path) -> None:
    from safetensors import safe_open
    from transformers import WhisperConfig, WhisperModel

    from audiomoe.models.tokenizer import byte_chatml_tokenizer

    tiny = build_preset("tiny")
    torch.manual_seed(1)
    whisper = WhisperModel(WhisperConfig(**tiny.encoder.config))
    whisper.save_pretrained(tmp_path / "whisper")
    base = _model().llm
    base.save_pretrained(tmp_path / "llm")
    byte_chatml_tokenizer().save_pretrained(tmp_path / "llm")

    config = build_preset(
        "tiny",
        encoder={"path": str(tmp_path / "whisper"), "config": None},
        llm={"path": str(tmp_path / "llm"), "config": None, "tokenizer": ""},
        freeze={"llm": True},
        lora={"llm": True, "r": 4},
    )
    model = AudioLanguageModel(config)
    # Weights came from the directories.
    torch.testing.assert_close(
        model.encoder.encoder.conv1.weight, whisper.encoder.conv1.weight, rtol=0, atol=0
    )
    torch.testing.assert_close(model.llm.lm_head.weight, base.lm_head.weight, rtol=0, atol=0)
    for p in (n for n, _ in model.named_parameters() if ".lora_B." in n):
        dict(model.named_parameters())[p].data.normal_()  # as if trained
    model.save_pretrained(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(
        k.startswith("adapter.") or ".lora_" in k for k in keys
    )  # base weights referenced by path
    loaded = AudioLanguageModel.from_pretrained(tmp_path / "ckpt")
    batch = model.processor(PROMPTS, _clips(), answers=ANSWERS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="adapter.input_dim = 7 but the model needs 64"):
        AudioLanguageModel(build_preset("tiny", adapter={"input_dim": 7}))
    with pytest.raises(ConfigError, match="adapter type 'nope' is unknown"):
        _model("nope")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        AudioLanguageModel(build_preset("tiny", llm={"path": "/no/such/llm", "config": None}))
    with pytest.raises(ConfigError, match="unknown config key"):
        build_preset("tiny", freeze={"encodr": True})
    assert isinstance(build_preset("tiny"), LALMConfig)


def test_waveform_encoder_family_fits_the_same_model(tmp_path) -> None:
    """A wav2vec2-architecture encoder (raw waveforms in) plugs in by config alone."""
    w2v = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [16, 16],
        "conv_kernel": [10, 8],
        "conv_stride": [5, 4],
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
    }
    model = AudioLanguageModel(build_preset("tiny", encoder={"type": "wav2vec2", "config": w2v}))
    clips = _clips()[:2]
    batch = model.processor(["<audio> hi", "<audio> yo"], clips, answers=["a", "b"])
    assert batch["audio_features"].shape == (2, 16000)  # waveforms
    assert model.audio_token_lengths(batch["audio_lengths"]).tolist() == [
        200,
        112,
    ]  # 20 ms frames (9000 -> 448), stacked by 4
    model.save_pretrained(tmp_path)
    loaded = AudioLanguageModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_cli_init_then_infer(tmp_path, capsys) -> None:
    import json

    import soundfile as sf

    from audiomoe.cli.main import main

    wav = tmp_path / "x.wav"
    sf.write(wav, np.sin(2 * np.pi * 440 * np.arange(32000) / 22050).astype(np.float32) * 0.5, 22050)
    assert main(["init", "--preset", "tiny", "--adapter", "moe", "--out", str(tmp_path / "m")]) == 0
    assert "adapter" in capsys.readouterr().out
    args = ["infer", "--checkpoint", str(tmp_path / "m"), "--audio", str(wav), "--audio", str(wav)]
    assert (
        main(
            [
                *args,
                "--prompt",
                "What do you hear?",
                "--max-new-tokens",
                "3",
                "--json",
                str(tmp_path / "o.json"),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(wav))
    records = json.loads((tmp_path / "o.json").read_text())
    assert [r["answer"] for r in records][0] == records[1]["answer"]  # same clip, greedy: same answer
    # A non-empty output directory and a missing checkpoint are one-line user errors (exit 2).
    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m")]) == 2
    assert main(["infer", "--checkpoint", str(tmp_path / "nope"), "--audio", str(wav)]) == 2


def test_shipped_lalm_configs_parse() -> None:
    from audiomoe.config import load_config

    config = load_config(LALMConfig, "lalm-whisper-large-v3-qwen2.5-7b")  # a shipped config, by name
    assert config.adapter["type"] == "moe" and config.llm.dtype == "bfloat16" and config.lora.llm
