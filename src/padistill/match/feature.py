"""Gradient matching (DC / DSA) and distribution matching (DM) with PAD's two filters (paper App. A.1).

Input per iteration: a freshly initialised network, per-class batches of real images (drawn only from
the FIEX-pruned pool) and the synthetic images of the class. Output: gradients w.r.t. the synthetic
images, applied by the shared distillation loop (`syn.apply`), which also handles resume, metrics,
divergence and torchrun averaging exactly as for trajectory matching.

- DC (Zhao et al. 2021), DSA when augmentation is on: per class, the gradient of the CE loss of the
  network on real data and on synthetic data are compared layer by layer with DC's distance
  sum over output units of (1 - cos(g_real, g_syn)) (weights reshaped to [out, -1]; 1-D tensors such as
  biases and norm scales contribute nothing, as in DC). `outer_loop` image updates per iteration, with
  `inner_loop` epochs of network training on the synthetic set between them. DSA uses the same draw
  for the real and the synthetic batch (siamese).
- DM (Zhao & Bilen 2023): per class, || mean embed(real) - mean embed(syn) ||^2 with a fresh network
  whose weights are not trained.
- FIEM: the same `ParamCut` as trajectory matching. DC drops the masked (shallow) part of every
  gradient from the distance — a cut inside a tensor drops whole output units plus the masked columns
  of one unit — so masked parameters contribute nothing and get no gradient. DM: alpha = 0 is standard
  DM (the final embedding only); alpha > 0 is PAD's variant, where the network returns every layer's output
  (logits included) and the cut masks the shallow ones channel by channel (`filters.params.kept_channels`):
  the distance sums over the kept channels of every layer output. Larger alpha keeps a strict subset.
- FIEX: `distill.prune` removes the hardest (small IPC) or easiest (large IPC) share of every class by
  the difficulty ordering of a scores folder (`filters.prune_ordering`); pruned samples are never drawn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from padistill.errors import PadistillError
from padistill.filters.params import FeatureSlice, ParamCut, dm_feature_selection
from padistill.filters.schedule import prune_ordering
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


class _ClassPools:
    """Per-class index pools of real images (after FIEX pruning) and seeded batch drawing."""

    def __init__(self, prepared, ordering: torch.Tensor | None):
        if ordering is None:
            self.pools = [idx for idx in prepared.class_indices()]
        else:
            self.pools = [row.clone() for row in ordering]
        self.x = prepared.x_train

    def batch(self, c: int, n: int, g: torch.Generator) -> torch.Tensor:
        pool = self.pools[c]
        pick = pool[torch.randperm(len(pool), generator=g)[:n]]
        return self.x[pick.to(self.x.device)]


class _FeatureMatcher:
    def __init__(self, cfg, prepared, augment, cut: ParamCut, pools: _ClassPools, rank: int, world: int):
        self.cfg, self.d, self.prepared = cfg, cfg.distill, prepared
        self.augment, self.cut, self.pools = augment, cut, pools
        self.rank, self.world = rank, world

    def _net(self, it: int, tag: str):
        from padistill.context import build_net

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator(self.cfg.seed, tag, it, self.rank)))
        return build_net(self.prepared, seed=seed)

    def _class_batches(self, c: int, syn, g: torch.Generator):
        """Class c's real batch and its synthetic rows (a leaf to differentiate), both augmented with ONE
        DSA draw (siamese): returns (syn_c, real_aug, syn_aug)."""
        ipc = syn.ipc
        real = self.pools.batch(c, self.d.batch_real, g)
        syn_c = syn.images[c * ipc:(c + 1) * ipc].detach().requires_grad_(True)
        if self.augment is None:
            return syn_c, real, syn_c
        draw = self.augment.sample(1, self.prepared.image_size, g, shared=True)
        return syn_c, self.augment.apply(real, draw), self.augment.apply(syn_c, draw)


class GradientMatcher(_FeatureMatcher):
    name = "dc"

    def step(self, it: int, syn, update) -> dict:
        from padistill.nets import param_layout
        from padistill.training import train_epoch

        d = self.d
        g = generator(self.cfg.seed, "dc-iteration", it, self.rank)
        net = self._net(it, "dc-net")
        params = list(net.parameters())
        offsets = param_layout(net).offsets
        net_opt = torch.optim.SGD(net.parameters(), lr=d.net_lr, momentum=d.net_momentum)
        C, ipc = syn.num_classes, syn.ipc
        losses, status = [], "skipped"
        for ol in range(d.outer_loop):
            grads = torch.zeros_like(syn.images)
            total = 0.0
            for c in range(C):
                syn_c, xr, xs = self._class_batches(c, syn, g)
                yr = torch.full((len(xr),), c, device=xr.device, dtype=torch.long)
                ys = torch.full((len(xs),), c, device=xs.device, dtype=torch.long)
                g_real = [t.detach() for t in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
                g_syn = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
                loss = dc_distance(list(g_syn), g_real, offsets, self.cut)
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
                train_epoch(net, net_opt, x_syn, y_syn, batch=256, generator=g, augment=self.augment,
                            microbatch=None)
        return {"loss": sum(losses) / len(losses), "status": status}


class DistributionMatcher(_FeatureMatcher):
    name = "dm"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        from padistill.context import build_net

        probe = build_net(self.prepared, seed=0)
        # None: plain DM (embedding); else the kept channels of each layer output (features_by_layer order)
        self.selection = dm_feature_selection(probe, self.cut.mode, self.cut.ratio)
        self.layer_names = (["embedding"] if self.selection is None else
                            [f"{s.name}[{s.first}:{s.channels}]" for s in self.selection])

    def step(self, it: int, syn, update) -> dict:
        g = generator(self.cfg.seed, "dm-iteration", it, self.rank)
        net = self._net(it, "dm-net")
        for p in net.parameters():
            p.requires_grad_(False)
        C, ipc = syn.num_classes, syn.ipc
        grads = torch.zeros_like(syn.images)
        total = 0.0
        for c in range(C):
            syn_c, xr, xs = self._class_batches(c, syn, g)
            loss = distribution_distance(net, xr, xs, self.selection)
            (gi,) = torch.autograd.grad(loss, syn_c)
            grads[c * ipc:(c + 1) * ipc] = gi
            total += float(loss.detach())
        status = update({"images": grads})
        return {"loss": total / C, "status": status}


def build_feature_matcher(cfg, prepared, augment, cut: ParamCut, scores_dir=None, rank: int = 0, world: int = 1,
                          log=print):
    d = cfg.distill
    ordering = None
    if d.prune.mode != "none" and d.prune.ratio > 0:
        from padistill.scores.ordering import load_scores_ordering

        if scores_dir is None:
            raise PadistillError(f"{d.method}: distill.prune needs an ordering; pass --scores <scores folder>")
        # validated: a finished scores folder of these training data, every row = exactly its class's indices
        full = load_scores_ordering(scores_dir, prepared)
        ordering = prune_ordering(full, d.prune.mode, d.prune.ratio)
        which = {"hard": "hardest", "easy": "easiest"}[d.prune.mode]
        log(f"{d.method}: FIEX removes the {d.prune.ratio:.0%} {which} samples of every class "
            f"({full.shape[1]} -> {ordering.shape[1]} per class)")
    if cut.start > 0:
        log(f"{d.method}: FIEM masks the first {cut.start} of {cut.total} parameters ({cut.ratio:.0%})")
    pools = _ClassPools(prepared, ordering)
    cls = GradientMatcher if d.method == "dc" else DistributionMatcher
    return cls(cfg, prepared, augment, cut, pools, rank, world)
