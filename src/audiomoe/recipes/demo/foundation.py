"""The LLM every arm starts from: a small Qwen2-architecture LM with a BPE vocabulary learned on the corpus text,
pretrained once on that text (nanoGPT-style packed blocks through the :class:`~audiomoe.training.Trainer`) and
cached by a stamp of everything that determines it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from audiomoe.config import from_dict, to_dict
from audiomoe.data.manifest import AudioRecord, read_manifest
from audiomoe.models.llm import LLMConfig, build_llm
from audiomoe.models.presets import build_preset
from audiomoe.models.tokenizer import byte_chatml_tokenizer, trained_bpe_chatml_tokenizer
from audiomoe.recipes.demo.settings import DemoSettings
from audiomoe.training.config import TrainConfig
from audiomoe.training.stream import BatchStream
from audiomoe.training.trainer import Trainer, seed_everything

FOUNDATION_LR = 2e-3
FOUNDATION_BATCH = 16


class TextLM(nn.Module):
    """Causal LM on text with the trainer's output contract (``loss``, ``aux_loss``)."""

    def __init__(self, llm: nn.Module) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        loss = self.llm(input_ids=input_ids, labels=input_ids).loss
        return SimpleNamespace(loss=loss, aux_loss=loss.new_zeros(()))


def corpus_text(records: list[AudioRecord], tokenizer: Any) -> list[str]:
    """The text side of the corpus: every (instruction, answer) as a ChatML chat, and every transcript."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r.instruction}, {"role": "assistant", "content": r.answer}],
            tokenize=False,
        )
        for r in records
    ]
    texts += sorted({r.transcript for r in records if r.transcript})
    return texts


def foundation_llm_config(settings: DemoSettings, vocab: int, eos: int, pad: int) -> LLMConfig:
    """The preset's Qwen2 LLM at the demo's size and the learned vocabulary."""
    llm = build_preset(settings.preset, "linear").llm
    sizes = {**settings.llm, "vocab_size": vocab, "eos_token_id": eos, "pad_token_id": pad}
    return dataclasses.replace(llm, config={**(llm.config or {}), **sizes})


def ensure_foundation(directory: Path, settings: DemoSettings, train_manifest: Path) -> dict[str, Any]:
    """Learn the tokenizer and pretrain the LLM on the corpus text once; a second run with the same settings and
    manifest reuses it. Returns a summary with ``path`` (a model directory with its tokenizer)."""
    llm_dir = directory / "llm"
    stamp = {
        "llm": settings.llm, "vocab_size": settings.vocab_size, "steps": settings.foundation_steps,
        "block": settings.foundation_block, "preset": settings.preset, "manifest_bytes": train_manifest.stat().st_size,
    }  # fmt: skip
    stamp_path = directory / "stamp.json"
    if stamp_path.is_file() and (llm_dir / "config.json").is_file():
        saved = json.loads(stamp_path.read_text())
        if saved.get("stamp") == stamp:
            return {**saved["result"], "reused": True, "path": str(llm_dir)}
    seed_everything(0)
    records = read_manifest(train_manifest, check_files=False)  # only the text is read: text-only items too
    texts = corpus_text(records, byte_chatml_tokenizer())
    tokenizer = trained_bpe_chatml_tokenizer(texts, settings.vocab_size)
    config = foundation_llm_config(settings, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    llm = build_llm(config).train()
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    block = settings.foundation_block
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)

    def plan(epoch: int) -> list[list[int]]:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch)).tolist()
        size = min(FOUNDATION_BATCH, len(order))
        return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]

    train_config = from_dict(
        TrainConfig,
        {"steps": settings.foundation_steps, "out_dir": str(directory / "run"), "seed": 0,
         "optim": {"lr": FOUNDATION_LR}, "schedule": {"warmup_steps": 10}, "log_every": 10,
         "precision": settings.precision, "tensorboard": False},
    )  # fmt: skip
    if (directory / "run").exists():
        shutil.rmtree(directory / "run")
    result = Trainer(
        train_config, TextLM(llm), BatchStream(plan, lambda idx: {"input_ids": data[list(idx)]})
    ).fit()
    llm.save_pretrained(str(llm_dir))
    tokenizer.save_pretrained(str(llm_dir))
    summary = {
        "tokens": len(ids), "vocab_size": len(tokenizer), "steps": result.step, "final_loss": result.last_loss,
        "train_seconds": round(result.train_seconds, 1), "params": sum(p.numel() for p in llm.parameters()),
        "config": to_dict(config)["config"],
    }  # fmt: skip
    stamp_path.write_text(json.dumps({"stamp": stamp, "result": summary}, indent=1))
    return {**summary, "reused": False, "path": str(llm_dir)}
