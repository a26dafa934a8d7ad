"""CORD's token-level pieces as pure tensor functions (arXiv 2601.16547 Eqs. 2, 4-7; ../shared/SIBLINGS.md §A.4).

All take ``(B, T)`` per-token tensors with a validity ``mask`` ``(B, T)`` (True on rollout tokens, False on the
padding after a rollout's end); padding never carries weight.
"""

from __future__ import annotations

import torch


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``D_t = KL(p_student ‖ p_teacher)`` over the full vocabulary (Eq. 2): logits ``(B, T, V)`` -> ``(B, T)``.
    Gradients reach the student only (the teacher side is detached)."""
    logp_s = student_logits.float().log_softmax(-1)
    logp_t = teacher_logits.detach().float().log_softmax(-1)
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_teacher ‖ p_student)`` per token (the forward-KL baseline, Eq. 13): ``(B, T, V)`` -> ``(B, T)``."""
    logp_s = student_logits.float().log_softmax(-1)
    logp_t = teacher_logits.detach().float().log_softmax(-1)
    return (logp_t.exp() * (logp_t - logp_s)).sum(-1)


def position_weights(mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Linear decay ``w_t = β − (β − 1)(t − 1)/(T − 1)`` over each rollout's own length T (Eq. 5): ``w_1 = β``,
    ``w_T = 1``; a rollout of one token gets β (the T = 1 guard); 0 on padding. ``(B, T)`` float."""
    lengths = mask.sum(-1, keepdim=True).float()
    t = torch.arange(mask.shape[1], device=mask.device).float().expand(mask.shape)
    w = beta - (beta - 1.0) * t / (lengths - 1).clamp(min=1)
    return w * mask


def top_divergence_weights(
    divergence: torch.Tensor, mask: torch.Tensor, k: int, alpha: float
) -> torch.Tensor:
    """α on each rollout's ``min(k, T)`` valid positions of largest divergence, 1 on its other valid positions,
    0 on padding (Eq. 4, top-K per sequence). ``(B, T)`` float; computed without gradient (a hard selection)."""
    with torch.no_grad():
        scores = divergence.detach().float().masked_fill(~mask, float("-inf"))
        k = min(k, mask.shape[1])
        w = torch.ones_like(scores)
        if k > 0:
            top = scores.topk(k, dim=1).indices
            chosen = torch.zeros_like(mask).scatter(1, top, True) & mask  # -inf (padding) picks are dropped
            w = torch.where(chosen, torch.full_like(w, alpha), w)
        return w * mask


def token_weights(
    divergence: torch.Tensor, mask: torch.Tensor, k: int, alpha: float, beta: float
) -> torch.Tensor:
    """``w_t = w_t^KL · w_t^pos`` (Eq. 6), ``(B, T)``."""
    return top_divergence_weights(divergence, mask, k, alpha) * position_weights(mask, beta)


def weighted_token_loss(divergence: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_t w_t D_t`` per rollout, averaged over the batch (Eq. 7: a sum over tokens, no 1/T)."""
    return (weights * divergence).sum(-1).mean()


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO advantage without std normalisation (Eq. 9): rewards ``(B, N)`` -> ``r − mean_group(r)``."""
    return rewards - rewards.mean(-1, keepdim=True)


def policy_gradient_loss(advantages: torch.Tensor, sequence_logp: torch.Tensor) -> torch.Tensor:
    """``−mean(A · log p(y | x_a))`` (Eq. 10, no ratio, no clipping, no KL term): both ``(B, N)``."""
    return -(advantages.detach() * sequence_logp).mean()
