"""Trajectory-matching distances (spec §3.9); the classification losses live in `padistill.losses`.

- `trajectory_distance`: the normalised matching loss  sum_K (theta_N - theta*_{t+M})^2 /
  sum_K (theta*_t - theta*_{t+M})^2  over a kept index set K (squared distances, as the reference
  computes it; the paper's eq. 2 shows un-squared norms). K = all for MTT/DATM, a FIEM selection for PAD.
"""

from __future__ import annotations

import torch

from padistill.filters.params import ParamCut, select_by_loss


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
