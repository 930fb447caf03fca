"""Gradient matching (DC, and DSA when augmentation is on; Zhao et al. 2021) with PAD's FIEM (paper App. A.1).

Input per iteration: a net factory, per-class real batches (`match.pools`, FIEX already applied by the loop), the
synthetic set, the flat offsets of the net's parameters and the FIEM `ParamCut`. Output: image gradients applied
through `update` (the synthetic set's `apply`), `outer_loop` times per iteration.

Per class, the CE-loss gradients of the network on the real and on the synthetic batch are compared layer by layer
with DC's distance, sum over output units of (1 - cos(g_real, g_syn)) (weights reshaped to [out, -1]; 1-D tensors
such as biases and norm scales contribute nothing, as in DC). Between outer loops the network trains `inner_loop`
epochs on the synthetic set with plain SGD at `net_lr` (the official DC code; `net_momentum` adds momentum).
FIEM drops the masked (shallow) part of every gradient from the distance: a cut inside a tensor drops whole output
units plus the masked columns of one unit, so masked parameters contribute nothing and get no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from padistill.filters.params import ParamCut
from padistill.match.pools import ClassPools, class_batches, fresh_net
from padistill.training import train_epoch
from padistill.utils.rng import generator


def dc_distance(g_syn: list[torch.Tensor], g_real: list[torch.Tensor], offsets: list[int],
                cut: ParamCut | None) -> torch.Tensor:
    """DC's layer-wise distance over the kept (deep) parameters."""
    total = g_syn[0].new_zeros(())
    start = cut.start if cut is not None else 0
    for gs, gr, off in zip(g_syn, g_real, offsets):
        if gs.ndim == 1:
            continue  # DC ignores biases / norm parameters
        gs2, gr2 = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        width = gs2.shape[1]
        first = start - off  # masked prefix length inside this tensor
        if first >= gs.numel():
            continue
        if first > 0:
            row, col = divmod(first, width)
            gs2, gr2 = gs2[row:], gr2[row:]
            if col:
                keep = torch.ones_like(gs2)
                keep[0, :col] = 0
                gs2, gr2 = gs2 * keep, gr2 * keep
        cos = (gs2 * gr2).sum(1) / (gs2.norm(dim=1) * gr2.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def gradient_step(it: int, syn, update, *, d, make_net, pools: ClassPools, offsets: list[int], cut: ParamCut | None,
                  augment, image_size, seed: int, rank: int = 0) -> dict:
    """One DC iteration: a fresh net, `d.outer_loop` image updates with `d.inner_loop` net epochs between them.
    `d`: the distill settings (outer_loop, inner_loop, batch_real, net_lr, net_momentum)."""
    g = generator(seed, "dc-iteration", it, rank)
    net = fresh_net(make_net, seed, "dc-net", it, rank)
    params = list(net.parameters())
    net_opt = torch.optim.SGD(net.parameters(), lr=d.net_lr, momentum=d.net_momentum)
    C, ipc = syn.num_classes, syn.ipc
    losses, status = [], "skipped"
    for ol in range(d.outer_loop):
        grads = torch.zeros_like(syn.images)
        total = 0.0
        for c in range(C):
            syn_c, xr, xs = class_batches(pools, c, syn, d.batch_real, augment, image_size, g)
            yr = torch.full((len(xr),), c, device=xr.device, dtype=torch.long)
            ys = torch.full((len(xs),), c, device=xs.device, dtype=torch.long)
            g_real = [t.detach() for t in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
            g_syn = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
            loss = dc_distance(list(g_syn), g_real, offsets, cut)
            if loss.requires_grad:
                (gi,) = torch.autograd.grad(loss, syn_c)
                grads[c * ipc:(c + 1) * ipc] = gi
            total += float(loss.detach())
        losses.append(total / C)
        status = update({"images": grads})
        if ol == d.outer_loop - 1:
            break
        y_syn = syn.class_of_rows()
        x_syn = syn.images.detach()
        for _ in range(d.inner_loop):
            train_epoch(net, net_opt, x_syn, y_syn, batch=256, generator=g, augment=augment, microbatch=None)
    return {"loss": sum(losses) / len(losses), "status": status}
