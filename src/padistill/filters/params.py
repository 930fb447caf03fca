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


# --------------------------------------------------------------------------------------------------
# DM: the same cut, read on the network's per-layer outputs (paper App. A.1)


@dataclass(frozen=True)
class FeatureSlice:
    """Kept channels [first, channels) of one stage output (`features_by_layer` index `stage`)."""

    stage: int
    name: str
    first: int
    channels: int


def kept_channels(cut: ParamCut, layout, stages: list[tuple[str, int, int]]) -> list[FeatureSlice]:
    """DM's FIEM: the output channels the depth/layer cut leaves intact, per stage, shallow -> deep.

    A stage's output channel j is produced first by row j of the stage's first weight tensor ([out, ...],
    conv filters or linear rows, flattened row-major), which sits at flat positions [a + j*row, a + (j+1)*row)
    before the stage's biases / norm parameters. Channel j is kept when that row lies wholly after the cut:
    a + j*row >= cut.start. Stages before the cut keep nothing, stages after it keep everything, the stage
    holding the cut keeps a suffix of its channels. `stages` = `ParamLayout.stage_ranges(model)` (logits last).
    """
    out = []
    for i, (name, a, _) in enumerate(stages):
        k = layout.offsets.index(a)
        channels = int(layout.shapes[k][0])
        row = layout.numels[k] // channels
        first = 0 if cut.start <= a else -(-(cut.start - a) // row)
        if first < channels:
            out.append(FeatureSlice(i, name, first, channels))
    return out


def largest_feature_ratio(layout, stages: list[tuple[str, int, int]]) -> float:
    """The largest depth ratio (4 decimals) whose cut still keeps one output channel (the last logit)."""
    _, a, _ = stages[-1]
    k = layout.offsets.index(a)
    last_row = a + (int(layout.shapes[k][0]) - 1) * (layout.numels[k] // int(layout.shapes[k][0]))
    r = math.floor((last_row + 1) / layout.total * 10_000) / 10_000
    while math.floor(r * layout.total) > last_row:
        r = round(r - 1e-4, 4)
    return r


def dm_feature_selection(model, mode: str, ratio: float,
                         where: str = "distill.select.ratio") -> list[FeatureSlice] | None:
    """What DM matches on `model` for FIEM (mode, ratio): None = plain DM (the final embedding, ratio 0);
    otherwise the kept channels of every layer output (`kept_channels`). A ratio that keeps nothing is refused,
    naming the largest ratio that still keeps something on this net."""
    from padistill.nets import param_layout

    if ratio == 0:
        return None
    layout = param_layout(model)
    stages = layout.stage_ranges(model)
    cut = param_cut(layout.total, ratio, mode, boundaries=[a for _, a, _ in layout.layer_ranges()])
    kept = kept_channels(cut, layout, stages)
    if not kept:
        raise PadistillError(f"config: '{where}' {ratio} masks every output channel of this net for DM "
                             f"({layout.total} parameters); the largest ratio that keeps one is "
                             f"{largest_feature_ratio(layout, stages)}")
    return kept
