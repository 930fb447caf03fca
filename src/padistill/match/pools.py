"""Per-class real-image pools for gradient and distribution matching (DC, DSA, DM; paper App. A.1).

Input: the training images (model space) and, per class, the indices that may be drawn — all of the class, or
what FIEX's static pruning kept (`filters.prune_ordering`), decided by the distillation loop. Output: seeded
per-class batches, the class's synthetic rows as a leaf to differentiate, and one DSA draw shared by the real and
the synthetic batch (siamese augmentation, as DSA does).
"""

from __future__ import annotations

import torch

from padistill.utils.rng import generator


class ClassPools:
    """Per-class index pools into `x` (rows of `pools[c]` are training indices of class c); pruned samples are
    simply absent, so they are never drawn."""

    def __init__(self, x: torch.Tensor, pools: list[torch.Tensor]):
        self.x, self.pools = x, [p.clone() for p in pools]

    def batch(self, c: int, n: int, g: torch.Generator) -> torch.Tensor:
        pool = self.pools[c]
        pick = pool[torch.randperm(len(pool), generator=g)[:n]]
        return self.x[pick.to(self.x.device)]


def class_batches(pools: ClassPools, c: int, syn, n_real: int, augment, image_size, g: torch.Generator):
    """Class c's real batch and its synthetic rows (a leaf to differentiate), both augmented with ONE DSA draw
    (siamese): returns (syn_c, real_aug, syn_aug)."""
    ipc = syn.ipc
    real = pools.batch(c, n_real, g)
    syn_c = syn.images[c * ipc:(c + 1) * ipc].detach().requires_grad_(True)
    if augment is None:
        return syn_c, real, syn_c
    draw = augment.sample(1, image_size, g, shared=True)
    return syn_c, augment.apply(real, draw), augment.apply(syn_c, draw)


def fresh_net(make_net, seed: int, tag: str, it: int, rank: int):
    """A freshly initialised network for iteration `it`, its seed derived from (seed, tag, it, rank)."""
    return make_net(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator(seed, tag, it, rank))))
