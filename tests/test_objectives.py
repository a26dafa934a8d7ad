"""Training objectives: CORD's token weights, KL and GRPO pieces with known answers (../shared/SIBLINGS.md §C.1
"Tests worth having"), and cord / forward_kl / sft running through ``audiomoe train`` on the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomoe.cli.main import main as cli
from audiomoe.config import ConfigError
from audiomoe.data.manifest import read_manifest
from audiomoe.models.batching import RecordBatcher
from audiomoe.models.lalm import AudioLanguageModel
from audiomoe.models.presets import build_preset
from audiomoe.training.config import ObjectiveSection
from audiomoe.training.objectives import OBJECTIVES, build_objective
from audiomoe.training.objectives.distill import TextLMObjective, token_logits
from audiomoe.training.objectives.weights import (
    group_advantages,
    policy_gradient_loss,
    position_weights,
    reverse_kl,
    token_weights,
    top_divergence_weights,
    weighted_token_loss,
)


def lengths_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None] < torch.tensor(lengths)[:, None]


def test_position_weights_run_from_beta_to_one_with_the_single_token_guard():
    w = position_weights(lengths_mask([5, 1, 3], 5), beta=2.0)
    assert w[0].tolist() == [2.0, 1.75, 1.5, 1.25, 1.0]  # w_1 = beta, w_T = 1, linear
    assert w[1].tolist() == [2.0, 0, 0, 0, 0]  # T = 1: no division by zero
    assert w[2].tolist() == [2.0, 1.5, 1.0, 0, 0]  # each rollout decays over its own length; padding is 0


def test_exactly_min_k_t_positions_get_alpha_and_padding_never_does():
    divergence = torch.tensor([[0.1, 5.0, 0.3, 2.0, 9.0, 7.0], [3.0, 1.0, 8.0, 9.0, 9.0, 9.0]])
    mask = lengths_mask([6, 3], 6)  # the second row's big values sit on padding
    w = top_divergence_weights(divergence, mask, k=2, alpha=2.0)
    assert w[0].tolist() == [1, 1, 1, 1, 2, 2]
    assert w[1].tolist() == [2, 1, 2, 0, 0, 0]
    short = top_divergence_weights(divergence, mask, k=20, alpha=3.0)  # K > T: every valid token, no padding
    assert (short == 3.0 * mask).all()
    combined = token_weights(divergence, mask, k=2, alpha=2.0, beta=2.0)
    assert combined[1].tolist() == [4.0, 1.5, 2.0, 0, 0, 0]
    assert weighted_token_loss(divergence, combined).item() == pytest.approx(
        ((divergence * combined).sum(-1)).mean().item()
    )


def test_reverse_kl_is_nonnegative_zero_for_identical_prompts_and_matches_the_sum():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 11), torch.randn(2, 4, 11)
    d = reverse_kl(student, teacher)
    assert (d >= 0).all() and torch.allclose(reverse_kl(student, student), torch.zeros(2, 4), atol=1e-6)
    p, q = student.softmax(-1), teacher.softmax(-1)
    torch.testing.assert_close(d, (p * (p / q).log()).sum(-1))


def test_no_gradient_reaches_the_teacher_branch():
    student = torch.randn(1, 3, 7, requires_grad=True)
    teacher = torch.randn(1, 3, 7, requires_grad=True)
    reverse_kl(student, teacher).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_grpo_gives_zero_gradient_when_all_rewards_agree():
    logp = torch.randn(2, 4, requires_grad=True)
    rewards = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]])
    assert (group_advantages(rewards) == 0).all()
    policy_gradient_loss(group_advantages(rewards), logp).backward()
    assert (logp.grad == 0).all()


def test_one_grpo_step_raises_the_log_probability_of_rewarded_rollouts():
    # a one-parameter-per-token toy policy over 3 tokens; rollouts are single tokens, the reward likes token 2
    logits = torch.zeros(3, requires_grad=True)
    rollouts = torch.tensor([[0, 2, 1, 2]])
    rewards = (rollouts == 2).float()
    logp = logits.log_softmax(-1)[rollouts]
    policy_gradient_loss(group_advantages(rewards), logp).backward()
    with torch.no_grad():
        stepped = (logits - 0.5 * logits.grad).log_softmax(-1)
    assert stepped[2] > logits.log_softmax(-1)[2] and stepped[0] < logits.log_softmax(-1)[0]


def test_unknown_objective_and_bad_values_are_one_line_errors():
    assert {"lm", "cord", "forward_kl", "sft"} <= set(OBJECTIVES)
    with pytest.raises(ConfigError, match="objective.type 'crod' is unknown .*did you mean 'cord'"):
        build_objective(ObjectiveSection(type="crod"))
    with pytest.raises(ConfigError, match="objective.alpha"):
        ObjectiveSection(alpha=0.5)


# -- end to end on the tiny preset ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 'digit' items with transcripts (tones stand in for speech: the mechanics, not the skill), 1 without, and
    2 gender items, which the distillation objectives must exclude (a transcript does not say who spoke)."""
    root = tmp_path_factory.mktemp("spoken")
    digits = ["one", "two", "three", "four"]
    lines = []
    for i in range(10):
        seconds = 0.4 + 0.1 * (i % 4)
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(root / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        if i < 8:
            item = {"task": "digit", "instruction": "Which digit is spoken?", "answer": digits[i % 4],
                    **({"transcript": digits[i % 4]} if i < 7 else {})}  # fmt: skip
        else:
            item = {"task": "gender", "instruction": "Male or female voice?", "answer": "female",
                    "transcript": "hello"}  # fmt: skip
        lines.append(json.dumps({"key": f"k{i}", "audio": f"c{i}.wav", "duration": seconds, **item}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("objective", ["cord", "forward_kl", "sft", "text_lm"])
def test_train_with_a_distillation_objective_logs_its_terms(spoken: Path, tmp_path: Path, capsys, objective):
    out = tmp_path / "run"
    (tmp_path / "tiny.yaml").write_text("model: {preset: tiny}\n")
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), "model.adapter={type: moe, num_experts: 4, top_k: 2}",
            f"data.train=[{spoken / 'train.jsonl'}]", "data.batch_size=4", "steps=2", "progress=false",
            "tensorboard=false", f"out_dir={out}", f"objective.type={objective}", "objective.max_new_tokens=6",
            "objective.group_size=2", "objective.teacher=frozen_init"]  # fmt: skip
    assert cli(args) == 0
    assert (
        "7 of 10 training items used; excluded 2 label not in the words (gender 2), 1 no transcript"
        in capsys.readouterr().out
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split", "train") == "train"]
    assert len(train) == 2 and all(np.isfinite(r["loss"]) for r in train)
    expected = {"cord": {"mean_kl", "token_loss", "topk_weight_share", "seq_loss", "reward_mean",
                         "zero_signal_groups"}, "forward_kl": {"mean_kl", "token_loss"}, "sft": {"token_loss"}, "text_lm": set()}  # fmt: skip
    assert {f"objective/{k}" for k in expected[objective]} <= set(train[0])
    if objective == "cord":
        assert 0 <= train[0]["objective/reward_mean"] <= 1 and train[0]["objective/mean_kl"] >= 0
    assert (out / "model" / "model.safetensors").is_file()


def test_teacher_forcing_scores_the_rollout_tokens_the_model_generated(spoken: Path):
    """The logits at the rollout's positions are the ones generation used: greedy rollouts are their argmax."""
    model = AudioLanguageModel(build_preset("tiny", "mlp"))
    records = read_manifest(spoken / "train.jsonl")[:3]
    prompt = RecordBatcher(records, model.processor).batch(records, [r.instruction for r in records], False)
    ids, mask = model.generate_ids(**prompt, max_new_tokens=5)
    with torch.no_grad():
        logits, _ = token_logits(model, prompt, ids, mask)
    assert torch.equal(logits.argmax(-1)[mask], ids[mask])


def test_cord_step_trains_the_student_and_never_the_frozen_teacher(spoken: Path):
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset("tiny", "mlp")).train()
    objective = build_objective(
        ObjectiveSection(type="cord", teacher="frozen_init", max_new_tokens=4, group_size=2)
    )
    records = objective.select(read_manifest(spoken / "train.jsonl"))
    batch = objective.collate(RecordBatcher(records, model.processor))([0, 1, 2])
    out = objective(model, batch)
    out.loss.backward()
    teacher = objective.teacher(model)
    assert teacher is not model and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.adapter.parameters() if p.grad is not None) > 0
    terms = objective.log_terms()
    assert terms["objective/topk_weight_share"] == pytest.approx(1.0)  # rollouts of <= 4 tokens: all in top-K
    assert objective.log_terms() == {}  # reset after reading


def test_text_audio_lm_adds_the_audio_view_of_every_item_to_the_text_view(spoken: Path, capsys):
    """Loss = audio_weight x the audio batch's own loss + the text view's next-token loss; items the words cannot
    label (gender) stay in the audio view; a batch with none usable for the text view has no text term."""
    torch.manual_seed(0)
    model = AudioLanguageModel(build_preset("tiny", "mlp")).eval()
    objective = build_objective(ObjectiveSection(type="text_audio_lm", audio_weight=0.5))
    records = objective.select(read_manifest(spoken / "train.jsonl"))
    assert len(records) == 10  # all kept: the audio view uses every item
    assert (
        "7 of 10 training items used in the text view (all of them in the audio view)"
        in capsys.readouterr().out
    )
    batcher = RecordBatcher(records, model.processor)
    batch = objective.collate(batcher)([0, 1, 8])  # two digits (usable), one gender item (audio view only)
    assert batch["labels"].shape[0] == 3 and batch["text_view"]["labels"].shape[0] == 2
    with torch.no_grad():
        out = objective(model, batch)
        audio = model(**batcher.collate([0, 1, 8]))
        text = TextLMObjective(ObjectiveSection(type="text_lm"))(model, TextLMObjective(
            ObjectiveSection(type="text_lm")).collate(batcher)([0, 1]))  # fmt: skip
    assert out.loss.item() == pytest.approx(0.5 * audio.loss.item() + text.lm_loss.item(), rel=1e-5)
    assert out.lm_loss.item() == pytest.approx(audio.lm_loss.item(), rel=1e-6)
    only_audio = objective.collate(batcher)([7, 8, 9])  # no transcript, gender, gender
    assert "text_view" not in only_audio
    with torch.no_grad():
        assert objective(model, only_audio).loss.item() == pytest.approx(
            0.5 * model(**batcher.collate([7, 8, 9])).loss.item(), rel=1e-5
        )
