"""FIEM: which parameters the matching distance uses (paper §3.3 eq. 4, Table 4c; spec §3.9, §8.10-8.12).

Parameters are laid out in one flat vector from shallow to deep (`padistill.nets.ParamLayout`).
- depth (paper, default): drop the first k = floor(alpha * P) entries; the cut is by parameter COUNT,
  so it usually falls inside a tensor (e.g. inside conv2 for ConvNetD3 at alpha = 0.25).
- layer: the same cut snapped down to a layer boundary, so only whole shallow layers are dropped.
- loss (the published code's variant): keep the P - floor(beta * P) entries with the LARGEST matching
  error; chosen per iteration from the squared differences.
- deep (the paper's Table 5b ablation, trajectory matching only): the mirror image of depth, drop the LAST
  k = floor(alpha * P) entries (the deepest parameters, classifier first) and match the shallow rest.
depth and layer are prefix cuts (`ParamCut.start`), deep a suffix cut (`ParamCut.end`); every matcher
(trajectory, gradient, distribution) reads the same `ParamCut`, so the filter is defined once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from padistill.errors import PadistillError


@dataclass(frozen=True)
class ParamCut:
    """Kept flat-parameter set for prefix / suffix cuts: indices [start, stop). loss mode keeps `keep` largest."""

    mode: str
    ratio: float
    total: int
    start: int  # first kept index for depth/layer; 0 for loss (selection happens per iteration) and deep
    end: int | None = None  # deep: first dropped index; None = total (nothing dropped at the deep end)

    @property
    def stop(self) -> int:
        """End (exclusive) of the kept range."""
        return self.total if self.end is None else self.end

    @property
    def full(self) -> bool:
        """True when every parameter is matched."""
        if self.mode == "loss":
            return math.floor(self.ratio * self.total) == 0
        return self.start == 0 and self.stop == self.total

    @property
    def kept(self) -> int:
        return self.total - math.floor(self.ratio * self.total) if self.mode == "loss" else self.stop - self.start

    def layer_kept(self, start: int, end: int) -> tuple[int, int]:
        """The kept part [a, end) of a tensor occupying [start, end) (empty when a == end)."""
        return max(start, min(end, self.start)), end


def param_cut(total: int, ratio: float, mode: str = "depth", boundaries: list[int] | None = None) -> ParamCut:
    """Build the FIEM selection for a network with `total` parameters.

    `boundaries`: flat start offsets of the layers (needed for mode 'layer').
    """
    if not 0.0 <= ratio < 1.0:
        raise PadistillError(f"select.ratio must be in [0, 1); got {ratio}")
    k = math.floor(ratio * total)
    if mode == "depth":
        return ParamCut("depth", ratio, total, k)
    if mode == "layer":
        if not boundaries:
            raise PadistillError("select.mode 'layer' needs the layer boundaries of the network")
        snapped = max((b for b in boundaries if b <= k), default=0)
        return ParamCut("layer", ratio, total, snapped)
    if mode == "loss":
        return ParamCut("loss", ratio, total, 0)
    if mode == "deep":
        return ParamCut("deep", ratio, total, 0, total - k)
    raise PadistillError(f"select.mode must be depth, layer, loss or deep; got {mode!r}")


def select_by_loss(d: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the P - floor(ratio*P) entries of `d` with the largest values (spec §8.12)."""
    P = d.numel()
    keep = P - math.floor(ratio * P)
    if keep >= P:
        return torch.arange(P, device=d.device)
    return torch.topk(d.detach(), keep, sorted=False).indices


def kept_layers(cut: ParamCut, layer_ranges: list[tuple[int, int]]) -> list[int]:
    """Indices of the layers that keep at least one parameter (used by DM's per-layer features)."""
    return [i for i, (s, e) in enumerate(layer_ranges) if e > cut.start]
