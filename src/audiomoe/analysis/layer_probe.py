"""Which encoder layer carries which attribute: linear probes on every hidden state (SUPERB's layer analysis).

For every closed-label task in a training and a test manifest, each clip's hidden states (the embedding output
and every block's output, the last final-normed) are pooled over its valid frames (mean and standard deviation,
``(2 * C,)`` per state), standardised with the training clips' statistics, and an L2-regularised multinomial
logistic regression per (task, state) is fitted on the training clips (L-BFGS) and scored on the test clips.
Accuracy against chance per state says where to tap the encoder (``EncoderConfig.output_layers``): Whisper's last
layer is trained to map speech to text and drops what identifies a voice, which its first blocks still hold.

    audiomoe probe-layers --train corpus/train.jsonl --test corpus/test.jsonl --encoder-path tiny.en

Why a hand-written logistic regression: 20 lines of torch instead of a scikit-learn dependency for one fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from audiomoe.config import to_dict
from audiomoe.data.audio import load_audio
from audiomoe.data.manifest import AudioRecord
from audiomoe.data.tasks import TASKS
from audiomoe.models.base import AudioEncoder, EncoderConfig, build_encoder


def all_states_encoder(config: EncoderConfig | dict[str, Any]) -> tuple[AudioEncoder, int]:
    """The encoder of ``config`` returning every hidden state concatenated, and the number of states."""
    base = to_dict(config) if isinstance(config, EncoderConfig) else dict(config)
    encoder = build_encoder(base | {"output_layers": [], "layer_weighted_sum": False})
    n_states = encoder.num_hidden_states
    encoder.config = dataclasses.replace(encoder.config, output_layers=list(range(n_states)))
    encoder.hidden_size *= n_states
    return encoder, n_states


@torch.no_grad()
def pooled_states(
    encoder: AudioEncoder, records: Sequence[AudioRecord], n_states: int, batch_size: int = 16
) -> torch.Tensor:
    """``(N, n_states, 2 * C)``: mean and standard deviation over each clip's valid frames, per hidden state."""
    extractor = encoder.feature_extractor
    rate = getattr(extractor, "sampling_rate", 16000)
    rows = []
    for start in range(0, len(records), batch_size):
        waves = [load_audio(r.audio, rate) for r in records[start : start + batch_size]]
        inputs = extractor(
            waves, sampling_rate=rate, padding="longest", return_attention_mask=True, return_tensors="pt"
        )
        values = inputs.get("input_features", inputs.get("input_values"))
        hidden, mask = encoder(values, inputs["attention_mask"].sum(-1))
        weights = mask[..., None].to(hidden.dtype)
        count = weights.sum(1).clamp(min=1)
        states = hidden.view(*hidden.shape[:2], n_states, -1)  # (B, T, S, C)
        mean = (states * weights[..., None]).sum(1) / count[..., None]
        var = ((states - mean[:, None]) ** 2 * weights[..., None]).sum(1) / count[..., None]
        rows.append(torch.cat([mean, var.sqrt()], dim=-1).float())
    return torch.cat(rows)


def probe_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    classes: int,
) -> float:
    """Test accuracy of an L2-regularised logistic regression fitted on ``train`` ``(N, D)``."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(train @ weight + bias, train_labels)
        loss = loss + 1e-2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((test @ weight + bias).argmax(1) == test_labels).float().mean())


def probe_layers(
    encoder_config: EncoderConfig | dict[str, Any],
    train_records: Sequence[AudioRecord],
    test_records: Sequence[AudioRecord],
    tasks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per closed-label task: chance, item counts and test accuracy per hidden state (0 = embedding output).

    ``tasks``: the tasks to probe (default: every closed-label task present in both manifests)."""
    closed = {name for name, task in TASKS.items() if task.labels}
    present = {r.task for r in train_records} & {r.task for r in test_records} & closed
    chosen = sorted(present if tasks is None else set(tasks) & present)
    train_records = [r for r in train_records if r.task in chosen]
    test_records = [r for r in test_records if r.task in chosen]
    encoder, n_states = all_states_encoder(encoder_config)
    encoder.eval()
    train_x = pooled_states(encoder, train_records, n_states)
    test_x = pooled_states(encoder, test_records, n_states)
    results: dict[str, Any] = {}
    for task in chosen:
        labels = sorted({r.answer for r in train_records if r.task == task})
        index = {label: i for i, label in enumerate(labels)}
        tr = [i for i, r in enumerate(train_records) if r.task == task]
        te = [i for i, r in enumerate(test_records) if r.task == task and r.answer in index]
        if len(labels) < 2 or not te:
            continue
        y_train = torch.tensor([index[train_records[i].answer] for i in tr])
        y_test = torch.tensor([index[test_records[i].answer] for i in te])
        accuracy = [
            probe_accuracy(train_x[tr, s], y_train, test_x[te, s], y_test, len(labels))
            for s in range(n_states)
        ]
        results[task] = {
            "group": TASKS[task].group,
            "chance": 1.0 / len(labels),
            "train_items": len(tr),
            "test_items": len(te),
            "accuracy": [round(a, 4) for a in accuracy],
            "best_state": int(np.argmax(accuracy)),
        }
    return {"states": n_states, "tasks": results}


def probe_markdown(result: dict[str, Any]) -> str:
    """A table: one row per task, one column per hidden state (the best in bold)."""
    states = result["states"]
    head = "| task | group | chance | " + " | ".join(f"state {s}" for s in range(states)) + " |"
    rows = [head, "|---|---|---:|" + "---:|" * states]
    for task, entry in result["tasks"].items():
        cells = [
            f"**{a:.2f}**" if s == entry["best_state"] else f"{a:.2f}"
            for s, a in enumerate(entry["accuracy"])
        ]
        rows.append(f"| {task} | {entry['group']} | {entry['chance']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
