"""Cross-modal self-distillation: the model given the transcript as text teaches itself given the audio.

``cord`` (arXiv 2601.16547, ../shared/SIBLINGS.md §A): per item, sample a rollout y ~ p(·|audio) (``temperature``),
teacher-force y under the audio prompt (with gradient) and under the text prompt (no gradient; ``teacher: live``
= the current weights, ``frozen_init`` = a frozen copy of the weights at the first step); token term
``Σ_t w_t · KL(p_audio ‖ p_text)`` with ``w_t`` = α on the top-K divergent tokens × linear position decay β -> 1;
GRPO term over ``group_size`` rollouts at ``group_temperature`` with a binary reward (the rollout's answer agrees
with the model's own greedy text answer, or ``reward: correctness`` with the gold answer), advantage = reward −
group mean, loss −A·log p(y|audio); total = token term + ``seq_weight`` × GRPO term (+ the adapter's aux loss).

``forward_kl`` and ``sft`` are the paper's off-policy baselines on teacher rollouts ŷ ~ p(·|text):
``Σ_t KL(p_text ‖ p_audio)`` and ``−Σ_t log p_audio(ŷ_t)``.

Items need a transcript, and a task whose label the words carry (group ``semantic``); others are excluded with a
count. Decisions of ours (the paper is silent): the text reference ŷ for the reward is greedy; the token term and
the GRPO term share one teacher-forced forward; Eq. 7 sums over tokens and we average over the batch.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from audiomoe.data.manifest import AudioRecord
from audiomoe.data.tasks import get_task
from audiomoe.evaluation.runner import text_prompt
from audiomoe.models.batching import RecordBatcher
from audiomoe.training.distributed import unwrap
from audiomoe.training.objectives.base import Objective, ObjectiveOutput, register_objective
from audiomoe.training.objectives.weights import (
    forward_kl,
    group_advantages,
    policy_gradient_loss,
    position_weights,
    reverse_kl,
    top_divergence_weights,
    weighted_token_loss,
)

PROMPT_KEYS = (
    "input_ids",
    "attention_mask",
    "audio_features",
    "audio_lengths",
    "encoder_hidden",
    "encoder_mask",
)


NO_TRANSCRIPT, LABEL_NOT_IN_WORDS = "no transcript", "label not in the words"


def usable_for_distillation(record: AudioRecord) -> str | None:
    """None if the item can be distilled across modalities, else why not."""
    if not record.transcript:
        return NO_TRANSCRIPT
    if get_task(record.task).group != "semantic":
        return LABEL_NOT_IN_WORDS
    return None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Sample rollouts without dropout and without training-time statistics (router loads), then restore."""
    was_training = model.training
    model.train(False)
    try:
        yield
    finally:
        model.train(was_training)


def repeat_rows(batch: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every tensor of a one-clip-per-row prompt batch (dim 0 indexes items)."""
    return {k: v[index.to(v.device)] for k, v in batch.items()}


def append_tokens(
    prompt: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A left-padded prompt batch ``(B, P)`` followed by tokens ``(B, T)`` (right-padded, ``mask``) for
    teacher forcing; the logits of token t are at position ``P - 1 + t``."""
    out = dict(prompt)
    out["input_ids"] = torch.cat([prompt["input_ids"], ids.to(prompt["input_ids"].device)], 1)
    out["attention_mask"] = torch.cat([prompt["attention_mask"], mask.to(prompt["attention_mask"])], 1)
    return out


def token_logits(model: nn.Module, prompt: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor):
    """Teacher-forced logits ``(B, T, V)`` of tokens ``ids`` after ``prompt``, and the model output."""
    out = model(**append_tokens(prompt, ids, mask))
    start = prompt["input_ids"].shape[1] - 1
    return out.logits[:, start : start + ids.shape[1]], out


def pad_tokens(
    ids: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    extra = width - ids.shape[1]
    return (
        torch.nn.functional.pad(ids, (0, extra), value=pad_id),
        torch.nn.functional.pad(mask, (0, extra), value=False),
    )


class _CrossModal(Objective):
    """Shared parts: item selection, the paired audio/text batch, the teacher."""

    usage_note = ""  # what "used" means, where not every item goes the same way

    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._frozen: nn.Module | None = None
        self.excluded: Counter[str] = Counter()

    def select(self, records: list[AudioRecord]) -> list[AudioRecord]:
        kept, unlabelled = [], Counter()
        for record in records:
            reason = usable_for_distillation(record)
            if reason is None:
                kept.append(record)
            elif reason == NO_TRANSCRIPT:
                self.excluded[reason] += 1
            else:
                unlabelled[record.task] += 1
        if unlabelled:
            tasks = ", ".join(f"{task} {n}" for task, n in unlabelled.most_common())
            self.excluded[f"{LABEL_NOT_IN_WORDS} ({tasks})"] = sum(unlabelled.values())
        if self.excluded:
            why = ", ".join(f"{n} {reason}" for reason, n in self.excluded.most_common())
            print(
                f"objective {self.name}: {len(kept)} of {len(records)} training items used{self.usage_note}; "
                f"excluded {why}"
            )
        if not kept:
            raise ValueError(
                f"objective {self.name} found no training item with a transcript and a semantic task; give "
                "manifests with 'transcript' fields (spoken digits, keywords, questions) or use objective.type=lm"
            )
        return kept

    def collate(self, batcher: RecordBatcher) -> Callable[[Sequence[int]], Any]:
        def collate(indices: Sequence[int]) -> dict[str, Any]:
            records = [batcher.records[i] for i in indices]
            batch: dict[str, Any] = batcher.batch(
                records, [r.instruction for r in records], with_answers=False
            )
            batch["text"] = batcher.text_batch([text_prompt(r) for r in records])
            batch["answers"] = [r.answer for r in records]
            batch["tasks"] = [r.task for r in records]
            return batch

        return collate

    def teacher(self, model: nn.Module) -> nn.Module:
        if self.config.teacher == "live":
            return model
        if self._frozen is None:  # the first call comes before the first optimizer step: the initial weights
            self._frozen = copy.deepcopy(model).train(False).requires_grad_(False)
        return self._frozen

    @staticmethod
    def split(batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return {k: batch[k] for k in PROMPT_KEYS if k in batch}, batch["text"]

    def sample(self, model: nn.Module, prompt: dict[str, torch.Tensor], temperature: float | None):
        """Rollouts ``(B, T)`` + validity mask from ``model`` (sampled at ``temperature``, greedy if None)."""
        with eval_mode(model):
            return model.generate_ids(
                **prompt,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=temperature is not None,
                temperature=temperature or 1.0,
            )

    def output(self, policy: nn.Module, main: torch.Tensor, student_out: Any) -> ObjectiveOutput:
        aux = student_out.aux_loss
        return ObjectiveOutput(loss=main + policy.config.aux_loss_weight * aux, aux_loss=aux)


@register_objective("text_lm")
class TextLMObjective(_CrossModal):
    """Next-token loss on the answers of the *text view* of each usable item (the transcript in quotes, then
    the question; no audio): makes the text path competent before it teaches the audio path."""

    def collate(self, batcher: RecordBatcher) -> Callable[[Sequence[int]], Any]:
        def collate(indices: Sequence[int]) -> dict[str, Any]:
            records = [batcher.records[i] for i in indices]
            return batcher.processor(
                [text_prompt(r) for r in records], [], answers=[r.answer for r in records]
            )

        return collate

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        return model(**batch)


@register_objective("text_audio_lm")
class TextAndAudioLMObjective(TextLMObjective):
    """``text_lm`` on the text view of the usable items of each batch, plus the plain next-token loss on the audio
    view of every item of it, weighted ``objective.audio_weight``: the text path becomes competent while the
    trainable LLM keeps what the audio path does for the groups the words cannot carry (emotion, speaker, sound,
    music), whose loss ``text_lm`` alone never sees."""

    usage_note = " in the text view (all of them in the audio view)"

    def select(self, records: list[AudioRecord]) -> list[AudioRecord]:
        super().select(records)  # counts and prints what the text view cannot use; refuses when nothing can
        return records  # every item feeds the audio view

    def collate(self, batcher: RecordBatcher) -> Callable[[Sequence[int]], Any]:
        def collate(indices: Sequence[int]) -> dict[str, Any]:
            batch: dict[str, Any] = batcher.collate(indices)  # the audio view, answers as labels
            records = [batcher.records[i] for i in indices]
            usable = [r for r in records if usable_for_distillation(r) is None]
            if usable:
                batch["text_view"] = batcher.processor(
                    [text_prompt(r) for r in usable], [], answers=[r.answer for r in usable]
                )
            return batch

        return collate

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        audio = model(**{k: v for k, v in batch.items() if k != "text_view"})
        loss = self.config.audio_weight * audio.loss
        if "text_view" in batch:
            text = model(**batch["text_view"])
            loss = loss + text.lm_loss
            self.record(text_lm=text.lm_loss)
        self.record(audio_lm=audio.lm_loss)
        return ObjectiveOutput(loss=loss, aux_loss=audio.aux_loss, lm_loss=audio.lm_loss)


@register_objective("cord")
class CORDObjective(_CrossModal):
    """On-policy weighted reverse KL + GRPO with an agreement reward (see the module docstring)."""

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        c = self.config
        policy = unwrap(model)
        audio, text = self.split(batch)
        ids, mask = self.sample(policy, audio, c.temperature)
        b = ids.shape[0]
        rows, group = torch.arange(b), None
        if c.seq_weight > 0:
            group_ids, group_mask = self.sample(policy, repeat_rows(audio, rows.repeat_interleave(c.group_size)),
                                                c.group_temperature)  # fmt: skip
            rewards = self.rewards(policy, text, group_ids, batch).view(b, c.group_size)
            width = max(ids.shape[1], group_ids.shape[1])
            pad = policy.processor.pad_token_id
            ids, mask = pad_tokens(ids, mask, width, pad)
            group_ids, group_mask = pad_tokens(group_ids, group_mask, width, pad)
            group = (group_mask, rewards)
            # one teacher-forced forward for the token-term rollouts and the GRPO group (same audio prompts)
            rows = torch.cat([rows, rows.repeat_interleave(c.group_size)])
            ids, mask = torch.cat([ids, group_ids]), torch.cat([mask, group_mask])
        logits, student_out = token_logits(model, repeat_rows(audio, rows), ids, mask)
        with torch.no_grad():
            teacher_logits, _ = token_logits(self.teacher(policy), text, ids[:b], mask[:b])
        divergence = reverse_kl(logits[:b], teacher_logits)
        kl_weights = top_divergence_weights(divergence, mask[:b], c.top_k, c.alpha)
        weights = kl_weights * position_weights(mask[:b], c.beta)
        token_loss = weighted_token_loss(divergence, weights)
        valid = mask[:b].float()
        on_top = top_divergence_weights(divergence, mask[:b], c.top_k, 2.0) == 2.0  # the top-K set itself
        top_share = (weights * on_top).sum() / weights.sum().clamp(min=1e-9)
        terms = {"mean_kl": (divergence * valid).sum() / valid.sum().clamp(min=1), "token_loss": token_loss,
                 "topk_weight_share": top_share, "rollout_tokens": valid.sum(-1).mean()}  # fmt: skip
        loss = token_loss
        if group is not None:
            group_mask, rewards = group
            logp = logits[b:].float().log_softmax(-1).gather(-1, ids[b:, :, None]).squeeze(-1)
            sequence_logp = (logp * group_mask).sum(-1).view(b, c.group_size)
            seq_loss = policy_gradient_loss(group_advantages(rewards), sequence_logp)
            loss = loss + c.seq_weight * seq_loss
            zero = (rewards.max(-1).values == rewards.min(-1).values).float().mean()
            terms |= {"seq_loss": seq_loss, "reward_mean": rewards.mean(), "zero_signal_groups": zero}
        self.record(**{k: v.detach() for k, v in terms.items()})
        return self.output(policy, loss, student_out)

    def rewards(
        self, policy: nn.Module, text: dict[str, torch.Tensor], ids: torch.Tensor, batch: dict
    ) -> torch.Tensor:
        """Binary judge, ``(B·N,)``: the group rollout's answer equals (after the task's normalisation: the label
        of a closed task) the model's own greedy text answer (``agreement``), or the gold answer."""
        n = self.config.group_size
        if self.config.reward == "agreement":
            ref_ids, _ = self.sample(self.teacher(policy), text, None)
            references = policy.processor.decode(ref_ids)
        else:
            references = list(batch["answers"])
        answers = policy.processor.decode(ids)
        rewards = []
        for i, answer in enumerate(answers):
            task, reference = get_task(batch["tasks"][i // n]), references[i // n]
            rewards.append(float(bool(answer.strip()) and task.is_correct(answer, reference)))
        return torch.tensor(rewards, device=ids.device)


class _OffPolicy(_CrossModal):
    """Baselines on teacher rollouts ŷ ~ p(·|text) at ``temperature``: ``loss(student logits, teacher logits,
    rollout ids, mask)`` -> (per-rollout loss ``(B,)``, extra terms)."""

    needs_teacher_logits = False

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> ObjectiveOutput:
        policy = unwrap(model)
        audio, text = self.split(batch)
        ids, mask = self.sample(self.teacher(policy), text, self.config.temperature)
        logits, student_out = token_logits(model, audio, ids, mask)
        teacher_logits = None
        if self.needs_teacher_logits:
            with torch.no_grad():
                teacher_logits, _ = token_logits(self.teacher(policy), text, ids, mask)
        per_rollout, terms = self.loss(logits, teacher_logits, ids, mask)
        loss = per_rollout.mean()
        self.record(token_loss=loss, rollout_tokens=mask.float().sum(-1).mean(), **terms)
        return self.output(policy, loss, student_out)

    def loss(self, logits, teacher_logits, ids, mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
        raise NotImplementedError


@register_objective("forward_kl")
class ForwardKLObjective(_OffPolicy):
    """``Σ_t KL(p(·|ŷ_<t, text) ‖ p(·|ŷ_<t, audio))`` over teacher rollouts (Eq. 13), batch mean."""

    needs_teacher_logits = True

    def loss(self, logits, teacher_logits, ids, mask):  # noqa: ANN001
        per_token = forward_kl(logits, teacher_logits) * mask
        return per_token.sum(-1), {"mean_kl": per_token.sum() / mask.sum().clamp(min=1)}


@register_objective("sft")
class SFTObjective(_OffPolicy):
    """``−Σ_t log p(ŷ_t | ŷ_<t, audio)`` over teacher rollouts (Eq. 12), batch mean."""

    def loss(self, logits, teacher_logits, ids, mask):  # noqa: ANN001
        logp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        return -(logp * mask).sum(-1), {}
