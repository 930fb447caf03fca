"""The start-epoch window of trajectory matching (DATM "sequential generation"; spec §3.7, §8.17).

UB(it) = min(T+, T + floor((T+ - T) * it / expansion_end_iteration)) when sequential, else T+.
The start epoch t is uniform in [T-, UB(it) - 1] (upper bound exclusive, so T+ itself is never drawn).
Paper Table 10 names these T-, T, T+ and "Interval" (iterations per +1 of the bound).
"""

from __future__ import annotations

import torch


def start_epoch_bound(iteration: int, d) -> int:
    """Exclusive upper bound of the start epoch at `iteration` for distill settings `d`."""
    if not d.sequential:
        return d.max_start_epoch
    lo, hi = d.current_max_start_epoch, d.max_start_epoch
    if d.expansion_end_iteration <= 0:
        return hi
    return min(hi, lo + (hi - lo) * iteration // d.expansion_end_iteration)


def sample_start_epoch(iteration: int, d, generator: torch.Generator) -> int:
    ub = start_epoch_bound(iteration, d)
    return int(torch.randint(d.min_start_epoch, ub, (1,), generator=generator).item())
