"""Classification losses shared by training, evaluation and the matchers (spec §3.4; RDED-style KD).

- `soft_cross_entropy`: mean over the batch of sum_k -log_softmax(logits)_k * softmax(target_logits)_k
  (temperature 1), the loss DATM/PAD train students and evaluation networks with on learned labels.
- `label_loss`: soft CE for float targets (label logits), hard CE for integer class targets.
- `kd_loss(T)`: T^2 * KL(softmax(t / T) || softmax(s / T)), the knowledge-distillation evaluation loss.
Every loss takes `reduction` = mean (default) | sum | none, applied by `reduce`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def reduce(per_sample: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sample losses -> 'sum' | 'none' (unchanged) | 'mean' (default)."""
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    return per_sample.mean()


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return reduce(-(F.log_softmax(logits, dim=1) * F.softmax(target_logits, dim=1)).sum(dim=1), reduction)


def label_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Soft CE for float targets (label logits), hard CE for integer class targets."""
    if targets.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits, targets, reduction=reduction)
    return soft_cross_entropy(logits, targets, reduction=reduction)


def kd_loss(temperature: float) -> Callable:
    """RDED-style distillation loss: T^2 * KL(softmax(t / T) || softmax(s / T)), summed over classes.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al.)."""
    t = float(temperature)

    def loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        log_p = F.log_softmax(teacher_logits / t, dim=1)
        log_q = F.log_softmax(student_logits / t, dim=1)
        return reduce((log_p.exp() * (log_p - log_q)).sum(dim=1) * (t * t), reduction)

    return loss
