"""Distribution matching (DM; Zhao & Bilen 2023) with PAD's FIEM (paper App. A.1, Table 7b).

Input per iteration: a net factory, per-class real batches (`match.pools`, FIEX already applied by the loop), the
synthetic set and the feature selection the loop derived from the FIEM cut (`filters.dm_feature_selection`).
Output: image gradients applied through `update`, once per iteration.

Per class, ||mean f(real) - mean f(syn)||^2 with a fresh network whose weights are not trained. f is the final
embedding for plain DM (selection None, alpha = 0); with alpha > 0 it is the kept channels of every layer output,
logits included (`filters.params.kept_channels`), summed over the layers.
"""

from __future__ import annotations

import torch

from padistill.errors import PadistillError
from padistill.filters.params import FeatureSlice
from padistill.match.pools import ClassPools, class_batches, fresh_net
from padistill.utils.rng import generator


def dm_features(net, x: torch.Tensor, selection: list[FeatureSlice] | None) -> list[torch.Tensor]:
    """What DM compares: [embedding] for plain DM (selection None), else the kept channels of each layer output
    (`filters.params.dm_feature_selection`), each flattened [B, -1]."""
    if selection is None:
        return [net.embed(x)]
    outs = net.features_by_layer(x)
    feats = []
    for s in selection:
        f = outs[s.stage]
        if s.first:
            per, rest = divmod(f.shape[1], s.channels)
            if rest:
                raise PadistillError(f"dm: output of layer {s.name} has {f.shape[1]} values, not a multiple of "
                                     f"its {s.channels} channels; FIEM cannot select channels there "
                                     "(use distill.select.mode=layer)")
            f = f[:, s.first * per:]
        feats.append(f)
    return feats


def distribution_distance(net, real: torch.Tensor, syn: torch.Tensor,
                          selection: list[FeatureSlice] | None) -> torch.Tensor:
    """sum over the compared features of ||mean f(real) - mean f(syn)||^2 (differentiable w.r.t. `syn`)."""
    with torch.no_grad():
        fr = [f.mean(0) for f in dm_features(net, real, selection)]
    fs = [f.mean(0) for f in dm_features(net, syn, selection)]
    return sum(((a - b) ** 2).sum() for a, b in zip(fr, fs))


def distribution_step(it: int, syn, update, *, batch_real: int, make_net, pools: ClassPools,
                      selection: list[FeatureSlice] | None, augment, image_size, seed: int, rank: int = 0) -> dict:
    """One DM iteration: a fresh untrained net, one image update from all classes."""
    g = generator(seed, "dm-iteration", it, rank)
    net = fresh_net(make_net, seed, "dm-net", it, rank)
    for p in net.parameters():
        p.requires_grad_(False)
    C, ipc = syn.num_classes, syn.ipc
    grads = torch.zeros_like(syn.images)
    total = 0.0
    for c in range(C):
        syn_c, xr, xs = class_batches(pools, c, syn, batch_real, augment, image_size, g)
        loss = distribution_distance(net, xr, xs, selection)
        (gi,) = torch.autograd.grad(loss, syn_c)
        grads[c * ipc:(c + 1) * ipc] = gi
        total += float(loss.detach())
    status = update({"images": grads})
    return {"loss": total / C, "status": status}
