"""Losses shared by the matchers, the student and the evaluation protocol (spec §3.4, §3.9).

- `soft_cross_entropy`: mean over the batch of sum_k -log_softmax(logits)_k * softmax(target_logits)_k
  (temperature 1), the loss DATM/PAD train students and evaluation networks with on learned labels.
- `trajectory_distance`: the normalised matching loss  sum_K (theta_N - theta*_{t+M})^2 /
  sum_K (theta*_t - theta*_{t+M})^2  over a kept index set K (squared distances, as the reference
  computes it; the paper's eq. 2 shows un-squared norms). K = all for MTT/DATM, a FIEM selection for PAD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from padistill.filters.params import ParamCut, select_by_loss


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    per_sample = -(F.log_softmax(logits, dim=1) * F.softmax(target_logits, dim=1)).sum(dim=1)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    return per_sample.mean()


def label_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Soft CE for float targets (label logits), hard CE for integer class targets."""
    if targets.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(logits, targets, reduction=reduction)
    return soft_cross_entropy(logits, targets, reduction=reduction)


def trajectory_distance(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                        cut: ParamCut | None = None) -> torch.Tensor:
    """Normalised squared distance over the kept parameters (differentiable w.r.t. `final`)."""
    d = (final - target) ** 2
    s = (start - target) ** 2
    if cut is None or (cut.mode != "loss" and cut.full) or (cut.mode == "loss" and cut.ratio == 0):
        return d.sum() / s.sum()
    if cut.mode == "loss":
        keep = select_by_loss(d, cut.ratio)
        return d[keep].sum() / s[keep].sum()
    return d[cut.start:cut.stop].sum() / s[cut.start:cut.stop].sum()


def per_layer_distance(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                       ranges: list[tuple[str, int, int]]) -> dict[str, float]:
    """Matching loss of each layer on its own (paper Fig. 5), for monitoring only."""
    with torch.no_grad():
        d = (final - target) ** 2
        s = (start - target) ** 2
        out = {}
        for name, a, b in ranges:
            den = s[a:b].sum()
            out[name] = float(d[a:b].sum() / den) if den > 0 else float("nan")
    return out
