"""Knowledge distillation from a softmax teacher: soft cross-entropy on logits + token-level MSE (MPCViT)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                       ) -> torch.Tensor:
    """T² · CE(softmax(teacher/T), log_softmax(student/T)), averaged over the batch."""
    target = F.softmax(teacher_logits / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    return -(target * log_probs).sum(-1).mean() * temperature ** 2


def token_mse(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """MSE over all final-norm tokens (class token included)."""
    return F.mse_loss(student_tokens, teacher_tokens)


def distillation_loss(student_logits: torch.Tensor, student_tokens: torch.Tensor, teacher_logits: torch.Tensor,
                      teacher_tokens: torch.Tensor, logit_weight: float, token_weight: float,
                      temperature: float = 1.0) -> torch.Tensor:
    loss = student_logits.new_zeros(())
    if logit_weight:
        loss = loss + logit_weight * soft_cross_entropy(student_logits, teacher_logits, temperature)
    if token_weight:
        loss = loss + token_weight * token_mse(student_tokens, teacher_tokens)
    return loss
