"""The transformers-native model: loading without audiomoe, remote code generated from the package, PEFT LoRA
folders, merged export, compact references with checksums, and ``audiomoe infer`` on it."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from audiomoe.adapters import ADAPTERS
from audiomoe.cli.main import main
from audiomoe.models.hf import bundle
from audiomoe.models.hf.export import load_native, save_native, to_native
from audiomoe.models.hf.modeling_audiomoe import AudiomoeForConditionalGeneration
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from isolated_env import run_isolated, site_with

PROMPTS = ["What do you hear?", "Describe it."]


def _clips(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000)]


def _batch(processor) -> dict[str, torch.Tensor]:
    return processor(PROMPTS, [[clip] for clip in _clips()])


def _randomise_lora(model: AudioLanguageModel, seed: int = 1) -> None:
    """LoRA B starts at zero (a no-op); give it values as training would."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            param.data.copy_(0.5 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audiomoe model directory (MoE adapter) as `audiomoe init` / training write it."""
    directory = tmp_path_factory.mktemp("saved") / "model"
    AudioLanguageModel(build_preset("tiny", adapter_type="moe")).save_pretrained(directory)
    return directory


def test_without_audiomoe_automodel_gives_audiomoes_logits_and_greedy_output(
    saved: Path, tmp_path: Path
) -> None:
    """Must show 1: in an environment with only torch + transformers (and their dependencies), a model saved by
    audiomoe loads with AutoModel / AutoModelForCausalLM / AutoProcessor / pipeline (trust_remote_code) and
    decodes exactly as audiomoe does; generate takes GenerationConfigs for greedy, beam search and sampling."""
    out = tmp_path / "native"
    assert main(["export", str(saved), str(out)]) == 0  # an existing model directory converts
    model = AudioLanguageModel.from_pretrained(saved)
    batch = _batch(model.processor)
    with torch.no_grad():
        logits = model(**batch).logits
    greedy = model.generate(**batch, max_new_tokens=6)
    np.save(tmp_path / "clips.npy", np.stack([np.pad(c, (0, 16000 - len(c))) for c in _clips()]))

    site = site_with(tmp_path / "site", ["torch", "transformers"])
    script = f"""
import importlib.util, json
import numpy as np, torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor, GenerationConfig, pipeline
assert importlib.util.find_spec("audiomoe") is None and importlib.util.find_spec("peft") is None
out = {str(out)!r}
assert AutoConfig.from_pretrained(out, trust_remote_code=True).model_type == "audiomoe"
model = AutoModel.from_pretrained(out, trust_remote_code=True)
causal = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
raw = np.load({str(tmp_path / "clips.npy")!r})
batch = processor({PROMPTS!r}, [[raw[0]], [raw[1][:9000]]])
with torch.no_grad():
    logits = model(**batch).logits
n = batch["input_ids"].shape[1]
greedy = model.generate(**batch, generation_config=GenerationConfig(max_new_tokens=6, do_sample=False))
beams = causal.generate(**batch, generation_config=GenerationConfig(max_new_tokens=6, num_beams=3))
torch.manual_seed(0)
sampled = model.generate(**batch, generation_config=GenerationConfig(max_new_tokens=6, do_sample=True, top_k=20))
pipe = pipeline(model=out, trust_remote_code=True)  # no task: the directory's own custom pipeline
piped = pipe({{"audio": raw[0], "prompt": {PROMPTS[0]!r}}}, max_new_tokens=6)
save_file({{"logits": logits, "input_ids": batch["input_ids"]}}, {str(tmp_path / "iso.safetensors")!r})
print(json.dumps({{"class": type(model).__name__, "greedy": processor.decode(greedy[:, n:]),
                  "beams": beams.shape[0], "sampled": sampled.shape[0], "piped": piped}}))
"""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    result = json.loads(run_isolated(site, script, env).strip().splitlines()[-1])
    isolated = load_file(str(tmp_path / "iso.safetensors"))
    assert result["class"] == "AudiomoeForConditionalGeneration"
    assert torch.equal(isolated["input_ids"], batch["input_ids"])
    torch.testing.assert_close(isolated["logits"], logits, rtol=0, atol=1e-5)
    assert result["greedy"] == greedy
    assert result["piped"] == greedy[0]  # transformers.pipeline(model=DIR, trust_remote_code=True)
    assert result["beams"] == result["sampled"] == 2


def test_remote_code_is_the_package_rewritten_and_nothing_else(saved: Path, tmp_path: Path) -> None:
    """The bundle is generated from audiomoe's modules: written files equal a fresh generation, each differs
    from its source only in import lines, no absolute audiomoe import is left, and every relative import is a
    file of the bundle (what transformers copies)."""
    out = save_native(AudioLanguageModel.from_pretrained(saved), tmp_path / "native")
    files = bundle.bundle()
    assert {name: (out / name).read_text() for name in files} == files
    entries = {
        "modeling_audiomoe.py",
        "configuration_audiomoe.py",
        "processing_audiomoe.py",
        "pipeline_audiomoe.py",
    }
    assert entries <= set(files)
    assert "audiomoe_adapters_moe.py" in files and "audiomoe_models_lalm.py" in files
    for name, text in files.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("audiomoe"), f"{name}:{node.lineno}"
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                assert f"{node.module}.py" in files, f"{name}:{node.lineno} imports a file not bundled"
        module = next(m for m in _bundled_modules() if f"{bundle.flat_name(m)}.py" == name)
        source = bundle.source_file(module).read_text()
        assert _without_imports(text, relative=True)[1:] == _without_imports(source, relative=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "audiomoe" and config["auto_map"]["AutoModel"] == (
        "modeling_audiomoe.AudiomoeForConditionalGeneration"
    )
    assert "path" not in json.dumps(config["audiomoe"]).replace('"path": ""', "")  # no machine-local path


def _without_imports(text: str, relative: bool) -> list[str]:
    """The lines of ``text`` outside its audiomoe imports (absolute ones) or relative imports (``relative``)."""
    drop = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            ours = node.level == 1 if relative else (node.module or "").startswith("audiomoe")
            if ours:
                drop.update(range(node.lineno, node.end_lineno + 1))
    return [line for number, line in enumerate(text.splitlines(), 1) if number not in drop]


def _bundled_modules() -> list[str]:
    seen, todo = set(), list(bundle.ENTRIES)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += bundle.rewrite_module(module)[1]
    return sorted(seen)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_native_model_equals_audiomoe_for_every_adapter(adapter: str) -> None:
    model = AudioLanguageModel(build_preset("tiny", adapter_type=adapter, aux_loss_weight=0.5))
    native = to_native(model)
    batch = model.processor(PROMPTS, [[clip] for clip in _clips()], answers=["a dog", "rain"])
    with torch.no_grad():
        ours, theirs = native(**batch), model(**batch, supervised_logits_only=False)  # all (B, L, V) logits
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=0)
    torch.testing.assert_close(
        ours.loss, theirs.loss, rtol=0, atol=0
    )  # LM loss + 0.5 * the adapter's aux loss


@pytest.mark.parametrize("n_samples", [1, 2])
def test_generate_follows_a_cacheless_greedy_loop_of_audiomoes_forward(saved: Path, n_samples: int) -> None:
    """Each step's scores of the native cached ``generate`` equal ``AudioLanguageModel.forward`` rerun on the
    whole sequence so far (no cache): the cache, position ids and masks of decoding are right, with and without
    padding (one sample: no padding, and transformers drops the all-ones mask)."""
    model = AudioLanguageModel.from_pretrained(saved)
    batch = model.processor(PROMPTS[-n_samples:], [[clip] for clip in _clips()[-n_samples:]])
    native = to_native(model)
    out = native.generate(
        **batch, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for step, logits in enumerate(out.logits):
        with torch.no_grad():
            reference = model(
                ids, mask, audio_features=batch["audio_features"], audio_lengths=batch["audio_lengths"]
            )
        torch.testing.assert_close(logits, reference.logits[:, -1], rtol=0, atol=1e-4, msg=f"step {step}")
        next_ids = out.sequences[:, ids.shape[1] : ids.shape[1] + 1]
        assert torch.equal(next_ids[:, 0], reference.logits[:, -1].argmax(-1))
        ids, mask = torch.cat([ids, next_ids], 1), torch.cat([mask, torch.ones_like(next_ids)], 1)


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[AudioLanguageModel, Path]:
    """A real-small-style model: encoder and LLM loaded from local pretrained directories, LoRA (peft) on the
    LLM, saved by audiomoe; the directories sit under a models root."""
    from transformers import WhisperConfig, WhisperModel

    from audiomoe.models.tokenizer import byte_chatml_tokenizer

    root = tmp_path_factory.mktemp("models")
    tiny = build_preset("tiny")
    torch.manual_seed(1)
    WhisperModel(WhisperConfig(**tiny.encoder.config)).save_pretrained(root / "whisper")
    AudioLanguageModel(tiny).llm.save_pretrained(root / "llm")
    byte_chatml_tokenizer().save_pretrained(root / "llm")
    config = build_preset(
        "tiny",
        adapter_type="mlp",
        encoder={"path": str(root / "whisper"), "config": None},
        llm={"path": str(root / "llm"), "config": None, "tokenizer": ""},
        freeze={"llm": True},
        lora={"llm": True, "r": 4},
    )
    model = AudioLanguageModel(config)
    _randomise_lora(model)
    model.save_pretrained(root / "run" / "model")
    return AudioLanguageModel.from_pretrained(root / "run" / "model"), root


def test_peft_loads_the_lora_folder_onto_the_base_llm(lora_model, tmp_path: Path) -> None:
    """Must show 2: DIR/lora is a standard PEFT adapter folder for the base LLM (a real-small-style model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, root = lora_model
    out = save_native(model, tmp_path / "native")
    assert {p.name for p in (out / "lora").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    peft_llm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "llm"), out / "lora")
    ids = torch.tensor([[1, 72, 101, 108, 108, 111, 33, 256]])
    with torch.no_grad():
        expected = model.llm(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(root / "llm")(input_ids=ids).logits
        torch.testing.assert_close(peft_llm(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
    assert (base - expected).abs().max() > 1e-2  # the LoRA changes the outputs: the check above could fail
    # The native directory loads the same folder itself (peft installed here) and matches audiomoe.
    native = AudiomoeForConditionalGeneration.from_pretrained(out)
    batch = _batch(model.processor)
    with torch.no_grad():
        torch.testing.assert_close(native(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_merge_lora_export_equals_the_unmerged_model(lora_model, tmp_path: Path) -> None:
    """Must show 3: `audiomoe export --merge-lora` gives the unmerged model's outputs (|Δlogit| <= 1e-4, float32)
    and the same greedy answers, with no LoRA folder left."""
    model, root = lora_model
    run = root / "run"  # a run directory: the model sits in run/model
    assert main(["export", str(run), str(tmp_path / "plain")]) == 0
    assert main(["export", str(run), str(tmp_path / "merged"), "--merge-lora"]) == 0
    assert not (tmp_path / "merged" / "lora").exists()
    plain = AudiomoeForConditionalGeneration.from_pretrained(tmp_path / "plain")
    merged = AudiomoeForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert merged.config.lora == {} and plain.config.lora == {"llm": "lora"}
    batch = _batch(model.processor)
    with torch.no_grad():
        unmerged_logits = plain(**batch).logits
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=0, atol=1e-4)
    n = batch["input_ids"].shape[1]
    greedy = [m.generate(**batch, max_new_tokens=6, do_sample=False)[:, n:] for m in (plain, merged)]
    assert torch.equal(*greedy)


def test_compact_export_references_frozen_parts_and_checks_their_checksum(lora_model, tmp_path: Path) -> None:
    model, root = lora_model
    out = save_native(model, tmp_path / "compact", include_frozen=False, model_root=root)
    config = json.loads((out / "config.json").read_text())
    assert {c: s["reference"] for c, s in config["sources"].items()} == {
        "encoder": "root:whisper",
        "llm": "root:llm",
    }
    assert all(k.startswith("adapter.") for k in load_file(str(out / "model.safetensors")))
    native = AudiomoeForConditionalGeneration.from_pretrained(out, model_root=root)
    batch = _batch(model.processor)
    with torch.no_grad():
        torch.testing.assert_close(native(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="AUDIOMOE_MODEL_ROOT"):
        AudiomoeForConditionalGeneration.from_pretrained(out)
    with pytest.raises(ValueError, match="machine-local directory"):
        save_native(model, tmp_path / "nope", include_frozen=False)
    # Other weights under the same reference: loading refuses them.
    weights = root / "llm" / "model.safetensors"
    original = load_file(str(weights))
    changed = {k: v + 0.01 if k.endswith("lm_head.weight") else v for k, v in original.items()}
    moved = tmp_path / "root2"
    (moved / "llm").mkdir(parents=True)
    (moved / "whisper").symlink_to(root / "whisper")
    for file in (root / "llm").iterdir():
        if file.name != "model.safetensors":
            (moved / "llm" / file.name).symlink_to(file)
    save_file(changed, str(moved / "llm" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="sources.llm: .* checksum"):
        AudiomoeForConditionalGeneration.from_pretrained(out, model_root=moved)


def test_infer_batches_folder_and_manifest_into_jsonl(saved: Path, tmp_path: Path, capsys) -> None:
    import soundfile as sf

    clips = tmp_path / "clips"
    clips.mkdir()
    for i, clip in enumerate(_clips()):
        sf.write(clips / f"c{i}.wav", clip, 16000)
    manifest = tmp_path / "m.jsonl"
    lines = [
        {"key": f"k{i}", "audio": f"clips/c{i}.wav", "task": "transcribe", "instruction": p, "answer": "x"}
        for i, p in enumerate(PROMPTS)
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    native = tmp_path / "native"
    assert main(["export", str(saved), str(native)]) == 0
    answers = {}
    for name, model_dir, extra in (
        ("one", saved, ["--batch-size", "1"]),
        ("two", native, ["--batch-size", "2"]),
    ):
        out = tmp_path / f"{name}.jsonl"
        args = [str(model_dir), "--folder", str(clips), "--manifest", str(manifest), "--jsonl", str(out)]
        assert main(["infer", *args, "--max-new-tokens", "4", "--device", "cpu", *extra]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["key"] for r in records] == ["c0", "c1", "k0", "k1"]
        answers[name] = [r["answer"] for r in records]
    assert answers["one"] == answers["two"]  # batching and the native export change nothing
    capsys.readouterr()
    assert (
        main(["infer", str(saved), "--audio", str(clips / "c0.wav"), "--num-beams", "2", "--jsonl", "-"]) == 0
    )
    record = json.loads(capsys.readouterr().out.strip())
    assert record["audio"] == str(clips / "c0.wav") and isinstance(record["answer"], str)
    assert main(["infer", str(saved)]) == 2  # no audio: a one-line user error


def test_load_native_reads_every_kind_of_directory_and_auto_classes_register(
    saved: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoProcessor

    from audiomoe.models.hf import register_auto_classes
    from audiomoe.models.hf.processing_audiomoe import AudiomoeProcessor

    out = save_native(AudioLanguageModel.from_pretrained(saved), tmp_path / "run" / "model")
    for path in (saved, out, tmp_path / "run"):
        model, processor = load_native(path)
        assert isinstance(model, AudiomoeForConditionalGeneration)
        assert processor.audio_token_id == model.audio_token_id
    register_auto_classes()  # with audiomoe installed no remote code is needed: the package's own classes load
    assert type(AutoModelForCausalLM.from_pretrained(out)) is AudiomoeForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(out)) is AudiomoeProcessor


def test_encoder_and_llm_lora_travel_as_two_peft_folders(tmp_path: Path) -> None:
    model = AudioLanguageModel(build_preset("tiny", lora={"llm": True, "encoder": True, "r": 4}))
    _randomise_lora(model)
    out = save_native(model, tmp_path / "native")
    assert json.loads((out / "config.json").read_text())["lora"] == {"encoder": "encoder_lora", "llm": "lora"}
    native = AudiomoeForConditionalGeneration.from_pretrained(out)
    batch = _batch(model.processor)
    with torch.no_grad():
        torch.testing.assert_close(native(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)
