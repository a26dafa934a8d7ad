"""Read CTranslate2 (faster-whisper) Whisper models without the ctranslate2 runtime; convert them to transformers.

``model.bin`` layout (little endian; strings are ``uint16`` length including a NUL terminator, then the bytes)::

    uint32 binary_version (4..6)  string spec_name ("WhisperSpec")  uint32 spec_revision
    uint32 n_variables, each:  string name  uint8 rank  uint32 dims[rank]  uint8 dtype  uint32 n_bytes  bytes
    uint32 n_aliases, each:    string alias  string variable_name

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Scalars (rank 0) hold settings such as
``encoder/num_heads``. int8 weights come with a per-row ``weight_scale`` (``w = int8 / scale``).

CTranslate2 fuses the self-attention Q, K, V projections (``linear_0``, ``3d`` rows) and the cross-attention K, V
projections (``linear_1``, ``2d`` rows); transformers keeps them apart and has no key bias (CTranslate2 stores zeros
there, which the converter checks).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, WhisperConfig

CT2_DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
SUPPORTED_VERSIONS = range(4, 7)


class CT2FormatError(ValueError):
    """``model.bin`` is not a CTranslate2 model this reader understands."""


def is_ct2_dir(path: str | Path) -> bool:
    return (Path(path) / "model.bin").is_file()


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error:
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos}") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.take("<H")
        raw = self.data[self.pos : self.pos + size - 1]
        self.pos += size
        return raw.decode("utf-8")

    def raw(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated tensor at byte {self.pos}")
        view = memoryview(self.data)[self.pos : self.pos + size]
        self.pos += size
        return view


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, torch.Tensor | int | float]]:
    """Parse ``model.bin`` (a file, or a directory holding it) -> (spec name, {name: tensor or scalar}).

    Aliases resolve to the same tensor. Scalars come back as Python numbers, tensors in their stored dtype.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    reader = _Reader(bytearray(path.read_bytes()), path)
    version = reader.take("<I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(
            f"{path}: CTranslate2 binary version {version} is not supported (expected "
            f"{SUPPORTED_VERSIONS.start}..{SUPPORTED_VERSIONS.stop - 1}); re-convert with a recent ct2-transformers-converter"
        )
    spec = reader.string()
    reader.take("<I")  # spec revision
    variables: dict[str, torch.Tensor | int | float] = {}
    for _ in range(reader.take("<I")):
        name = reader.string()
        shape = [reader.take("<I") for _ in range(reader.take("<B"))]
        code = reader.take("<B")
        if code not in CT2_DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype code {code}")
        tensor = torch.frombuffer(reader.raw(reader.take("<I")), dtype=CT2_DTYPES[code]).reshape(shape)
        variables[name] = tensor.item() if not shape else tensor
    for _ in range(reader.take("<I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    if reader.pos != len(reader.data):
        raise CT2FormatError(f"{path}: {len(reader.data) - reader.pos} trailing bytes after the aliases")
    return spec, variables


def write_ct2_model(
    path: str | Path,
    variables: dict[str, torch.Tensor | int],
    spec: str = "WhisperSpec",
    aliases: dict[str, str] | None = None,
    version: int = 6,
) -> None:
    """Write ``model.bin`` in the layout :func:`read_ct2_model` reads (tests and tools that make small models).

    Python ints become rank-0 int32 scalars; tensors keep their dtype."""
    codes = {dtype: code for code, dtype in CT2_DTYPES.items()}

    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    chunks = [
        struct.pack("<I", version),
        string(spec),
        struct.pack("<I", 1),
        struct.pack("<I", len(variables)),
    ]
    for name, value in variables.items():
        tensor = torch.tensor(value, dtype=torch.int32) if isinstance(value, int) else value.contiguous()
        if tensor.dtype not in codes:
            raise ValueError(f"{name}: dtype {tensor.dtype} has no CTranslate2 code")
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        chunks += [
            string(name),
            struct.pack("<B", tensor.dim()),
            struct.pack(f"<{tensor.dim()}I", *tensor.shape),
        ]
        chunks += [struct.pack("<BI", codes[tensor.dtype], len(data)), data]
    chunks.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        chunks += [string(alias), string(target)]
    Path(path).write_bytes(b"".join(chunks))


def _float(variables: dict[str, Any], name: str) -> torch.Tensor:
    """A weight as float32, dequantising int8 with its per-row scale."""
    tensor = variables[name]
    scale = variables.get(f"{name}_scale")
    if tensor.dtype == torch.int8:
        if scale is None:
            raise CT2FormatError(f"int8 tensor {name!r} has no {name}_scale")
        scale = torch.as_tensor(scale, dtype=torch.float32)
        return tensor.float() / (scale[:, None] if scale.dim() else scale)
    if not tensor.is_floating_point():
        raise CT2FormatError(
            f"{name!r} has dtype {tensor.dtype}; only float and int8-quantised weights convert"
        )
    return tensor.float()


def _layer_count(variables: dict[str, Any], stack: str) -> int:
    found = {int(m.group(1)) for n in variables if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if found != set(range(len(found))) or not found:
        raise CT2FormatError(f"{stack} layers are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def _split(fused: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return list(fused.chunk(parts, dim=0))


def _attention(out: dict[str, torch.Tensor], v: dict[str, Any], src: str, dst: str, fused_qkv: bool) -> None:
    """Self-attention (fused QKV in linear_0, output linear_1) or cross-attention (Q linear_0, fused KV linear_1,
    output linear_2) -> transformers q/k/v/out_proj. The key bias must be zero: transformers has none."""
    if fused_qkv:
        qw, kw, vw = _split(_float(v, f"{src}/linear_0/weight"), 3)
        qb, kb, vb = _split(_float(v, f"{src}/linear_0/bias"), 3)
        out_name = f"{src}/linear_1"
    else:
        qw, qb = _float(v, f"{src}/linear_0/weight"), _float(v, f"{src}/linear_0/bias")
        kw, vw = _split(_float(v, f"{src}/linear_1/weight"), 2)
        kb, vb = _split(_float(v, f"{src}/linear_1/bias"), 2)
        out_name = f"{src}/linear_2"
    if kb.abs().max() > 0:
        raise CT2FormatError(
            f"{src}: non-zero key bias (max {kb.abs().max():.3g}); transformers Whisper has none"
        )
    out.update(
        {
            f"{dst}.q_proj.weight": qw,
            f"{dst}.q_proj.bias": qb,
            f"{dst}.k_proj.weight": kw,
            f"{dst}.v_proj.weight": vw,
            f"{dst}.v_proj.bias": vb,
            f"{dst}.out_proj.weight": _float(v, f"{out_name}/weight"),
            f"{dst}.out_proj.bias": _float(v, f"{out_name}/bias"),
        }
    )


def _norm(out: dict[str, torch.Tensor], v: dict[str, Any], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = _float(v, f"{src}/gamma")
    out[f"{dst}.bias"] = _float(v, f"{src}/beta")


def _linear(out: dict[str, torch.Tensor], v: dict[str, Any], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = _float(v, f"{src}/weight")
    out[f"{dst}.bias"] = _float(v, f"{src}/bias")


@dataclass(frozen=True)
class WhisperTokens:
    """Ids of Whisper's special tokens (``-1`` where an English-only model has none)."""

    eos: int
    sot: int
    no_timestamps: int
    transcribe: int
    translate: int
    languages: dict[str, int]  # "<|en|>" -> id


def _special_ids(ct2_dir: Path) -> WhisperTokens:
    """Whisper's special tokens from ``tokenizer.json`` (or ``vocabulary.txt``, one token per line)."""
    tokenizer_file = ct2_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", [])
        vocab = {tok["content"]: tok["id"] for tok in added}
    elif (ct2_dir / "vocabulary.txt").is_file():
        lines = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
        vocab = {tok: i for i, tok in enumerate(lines) if tok.startswith("<|")}
    else:
        raise FileNotFoundError(
            f"{ct2_dir}: needs tokenizer.json or vocabulary.txt to find Whisper's special tokens"
        )
    required = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")
    missing = [tok for tok in required if tok not in vocab]
    if missing:
        raise CT2FormatError(f"{ct2_dir}: tokenizer lacks Whisper special tokens {missing}")
    return WhisperTokens(
        eos=vocab["<|endoftext|>"],
        sot=vocab["<|startoftranscript|>"],
        no_timestamps=vocab["<|notimestamps|>"],
        transcribe=vocab.get("<|transcribe|>", -1),
        translate=vocab.get("<|translate|>", -1),
        languages={tok: i for tok, i in vocab.items() if re.fullmatch(r"<\|[a-z]{2,3}\|>", tok)},
    )


def convert_ct2_whisper(
    ct2_dir: str | Path, verify: bool = True
) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """A CTranslate2 Whisper directory -> (``WhisperConfig``, float32 ``WhisperForConditionalGeneration`` state dict).

    ``verify`` checks the sha256 of ``model.bin`` when it belongs to a known weights package.
    """
    from audiomoe.models import weights

    ct2_dir = Path(ct2_dir)
    if verify:
        weights.verify_known(ct2_dir)
    spec, v = read_ct2_model(ct2_dir)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{ct2_dir}/model.bin holds a {spec!r}, not a WhisperSpec")
    if v.get("decoder/activation", 3) != 3 or v.get("decoder/pre_norm", 1) != 1:
        raise CT2FormatError(f"{ct2_dir}: unexpected decoder settings (activation/pre_norm) for Whisper")
    sd: dict[str, torch.Tensor] = {}
    n_enc, n_dec = _layer_count(v, "encoder"), _layer_count(v, "decoder")
    for i in ("1", "2"):
        _linear(sd, v, f"encoder/conv{i}", f"model.encoder.conv{i}")
    sd["model.encoder.embed_positions.weight"] = _float(v, "encoder/position_encodings/encodings")
    _norm(sd, v, "encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(sd, v, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True)
        _norm(sd, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _linear(sd, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(sd, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
        _norm(sd, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    sd["model.decoder.embed_tokens.weight"] = _float(v, "decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = _float(v, "decoder/position_encodings/encodings")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]  # tied (CT2 aliases the projection too)
    _norm(sd, v, "decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(sd, v, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True)
        _norm(sd, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _attention(sd, v, f"{src}/attention", f"{dst}.encoder_attn", fused_qkv=False)
        _norm(sd, v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _linear(sd, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(sd, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
        _norm(sd, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    ids = _special_ids(ct2_dir)
    vocab_size, d_model = sd["model.decoder.embed_tokens.weight"].shape
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=sd["model.encoder.conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=sd["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=sd["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=sd["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=sd["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=ids.eos,
        bos_token_id=ids.eos,
        eos_token_id=ids.eos,
        decoder_start_token_id=ids.sot,
        tie_word_embeddings=True,
        dtype="float32",
    )
    return config, sd


def generation_config(ct2_dir: str | Path, config: WhisperConfig) -> GenerationConfig:
    """Whisper generation settings (suppressed tokens, timestamps, languages) from the CT2 ``config.json``."""
    ct2_dir = Path(ct2_dir)
    ct2_config = (
        json.loads((ct2_dir / "config.json").read_text()) if (ct2_dir / "config.json").is_file() else {}
    )
    ids = _special_ids(ct2_dir)
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        decoder_start_token_id=ids.sot,
        eos_token_id=ids.eos,
        pad_token_id=ids.eos,
        bos_token_id=ids.eos,
        max_length=config.max_target_positions,
        no_timestamps_token_id=ids.no_timestamps,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, ids.eos]),
        alignment_heads=ct2_config.get("alignment_heads", []),
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if multilingual:
        gen.lang_to_id = dict(ids.languages)
        gen.task_to_id = {"transcribe": ids.transcribe, "translate": ids.translate}
    gen.forced_decoder_ids = None
    return gen


def save_tokenizer_files(ct2_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy ``tokenizer.json`` and write a ``tokenizer_config.json`` so ``WhisperTokenizer.from_pretrained`` loads it.

    Returns the files written (empty when the CT2 directory has no ``tokenizer.json``).
    """
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if not (ct2_dir / "tokenizer.json").is_file():
        return []
    shutil.copyfile(ct2_dir / "tokenizer.json", out_dir / "tokenizer.json")
    ids = _special_ids(ct2_dir)
    tokens = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    by_id = {tok["id"]: tok["content"] for tok in tokens}
    tokenizer_config = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": by_id[ids.eos],
        "eos_token": by_id[ids.eos],
        "unk_token": by_id[ids.eos],
        "pad_token": by_id[ids.eos],
        "model_max_length": 1024,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return ["tokenizer.json", "tokenizer_config.json"]


def convert_to_transformers(source: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers Whisper directory (safetensors, generation config, tokenizer, feature extractor).

    ``source`` is a CTranslate2 directory or the name of a pinned weights package (``tiny.en``, ``base``).
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from audiomoe.models import weights

    ct2_dir = Path(source).expanduser()
    if not ct2_dir.exists() and str(source) in weights.WHISPER_PACKAGES:
        ct2_dir = weights.ct2_dir(str(source))
    if not is_ct2_dir(ct2_dir):
        raise FileNotFoundError(
            f"{source}: no model.bin; give a CTranslate2 Whisper directory or one of "
            f"{sorted(weights.WHISPER_PACKAGES)}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, state = convert_ct2_whisper(ct2_dir, verify=True)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config(ct2_dir, config)
    model.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    save_tokenizer_files(ct2_dir, out_dir)
    return out_dir
