"""Per-class real-image pools of DC / DM: FIEX-pruned samples are never drawn (paper App. A.1)."""

import torch

from padistill.match.pools import ClassPools


def test_pruned_samples_are_never_drawn(tiny_prepared):
    p = tiny_prepared
    from padistill.filters.schedule import prune_ordering

    n = min(len(i) for i in p.class_indices())
    ordering = torch.stack([idx[:n] for idx in p.class_indices()])
    kept = prune_ordering(ordering, "hard", 0.5)
    pools = ClassPools(p.x_train, list(kept))
    g = torch.Generator().manual_seed(0)
    allowed = set(kept.reshape(-1).tolist())
    for c in range(p.num_classes):
        for _ in range(5):
            batch = pools.batch(c, 40, g)
            # identify drawn rows by exact image equality with the training set
            idx = [int((p.x_train == b).flatten(1).all(1).nonzero()[0]) for b in batch]
            assert set(idx) <= allowed
