"""Tokenizers built in code (no files, no downloads), for the random-init presets and tests.

``LLMConfig.tokenizer = "builtin:bytes"`` selects :func:`byte_chatml_tokenizer` from :data:`BUILTIN_TOKENIZERS`.
Once a model is saved, its tokenizer is saved with it as ordinary ``tokenizer.json`` files, so loading a
checkpoint never needs this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BUILTIN_PREFIX = "builtin:"

# ChatML, the template of Qwen2/2.5 and SmolLM2: <|im_start|>role\ncontent<|im_end|>\n
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per UTF-8 byte (256) plus ``<|im_end|>`` (EOS, end of turn),
    ``<|endoftext|>`` (padding) and ``<|im_start|>``; ChatML chat template. 259 tokens, any text round-trips."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # BPE with no merges over the byte alphabet = a plain byte tokenizer with GPT-2's printable byte mapping.
    return _chatml(_byte_level(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[])))


def _byte_level(model: models.Model) -> Tokenizer:
    """A tokenizer backend over GPT-2's printable byte alphabet (any text round-trips)."""
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _chatml(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """``backend`` with the ChatML special tokens (EOS ``<|im_end|>``, padding ``<|endoftext|>``) and template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def trained_bpe_chatml_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE learned from ``texts`` (as GPT-2's, at a small vocabulary) with the special tokens and ChatML
    template of :func:`byte_chatml_tokenizer`. On a corpus with a small vocabulary almost every word becomes one
    token, so sequences are ~4x shorter than bytes; any other text still round-trips through the byte alphabet."""
    backend = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|im_end|>", "<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return _chatml(backend)


BUILTIN_TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {"bytes": byte_chatml_tokenizer}


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """``"builtin:<name>"`` -> a tokenizer built in code; anything else -> ``AutoTokenizer`` from that directory."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_TOKENIZERS:
            raise ValueError(f"tokenizer {source!r} is unknown; built-in ones: {sorted(BUILTIN_TOKENIZERS)}")
        return BUILTIN_TOKENIZERS[name]()
    from pathlib import Path

    from transformers import AutoTokenizer

    if not Path(source).expanduser().is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {source!r} does not exist; set llm.tokenizer to a local directory or 'builtin:bytes'"
        )
    return AutoTokenizer.from_pretrained(str(Path(source).expanduser()))
