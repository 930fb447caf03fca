"""FIEX: the data scheduler (paper §3.2, App. A.2; spec §1.5, invariants §8.2-8.5).

Input: a per-class difficulty ordering `[C, N_c]` of global train indices (column 0 = easiest) and
the scheduler settings. Output: the global indices an expert trains on in a given epoch.

For epoch e (0-based), with K = N_c taken from the ordering (the reference hard-codes 5000, which
only works for CIFAR-10):
  e <= AEE       keep the first floor(p*K) columns, p = min(1, IR + (1-IR)*e/AEE)  (hard samples added last)
  AEE < e <= R1  all K columns
  R1 < e <= R2   drop the first floor(r1*K) columns (the easiest r1 of every class, in one shot)
  e > R2         drop the first floor(r2*K) columns (r2 is the TOTAL removed share)
Classes stay balanced in every epoch. The float expression is evaluated exactly as the reference does
so that the per-epoch counts match it (e.g. CIFAR-10: 3750, 3812, 3875, 3937, ..., 5000, 4500, 4000), except
that e = AEE always gives the full set (the float expression can fall one ulp short of 1 for some IR/AEE).
"""

from __future__ import annotations

import math

import torch

from padistill.errors import PadistillError


def kept_columns(epoch: int, n_per_class: int, schedule) -> tuple[int, int]:
    """Column range [start, end) of the ordering used in `epoch` (same for every class)."""
    K = int(n_per_class)
    if schedule is None or not schedule.enabled:
        return 0, K
    ir, aee = schedule.init_ratio, schedule.add_end_epoch
    if epoch < aee:
        p = min(1.0, ir + (1 - ir) * epoch / aee)
        return 0, max(1, int(p * K))
    if epoch == aee:
        # The float expression can land one ulp below 1 here (e.g. IR 0.3031..., AEE 47 gives K - 1);
        # the scheduler's contract (spec §1.5, §8.3) is the full set at AEE. Exact for the published settings.
        return 0, K
    if epoch <= schedule.rm_epoch_first:
        return 0, K
    ratio = schedule.rm_easy_ratio_first if epoch <= schedule.rm_epoch_second else schedule.rm_easy_ratio_second
    start = int(ratio * K)
    if start >= K:
        raise PadistillError(f"scheduler: removing {ratio:.0%} of {K} samples per class leaves none")
    return start, K


def scheduled_indices(ordering: torch.Tensor, epoch: int, schedule) -> torch.Tensor:
    """Global train indices used in `epoch` (class-major; the trainer shuffles them)."""
    start, end = kept_columns(epoch, ordering.shape[1], schedule)
    return ordering[:, start:end].reshape(-1)


def prune_ordering(ordering: torch.Tensor, mode: str, ratio: float) -> torch.Tensor:
    """Static FIEX for DC/DM (paper App. A.1, Table 6): remove the hardest or easiest `ratio` per class.

    Returns the kept part of the ordering, still `[C, K']` with column 0 = easiest.
    """
    if mode not in ("none", "hard", "easy"):
        raise PadistillError(f"prune: mode must be none, hard or easy; got {mode!r}")
    K = ordering.shape[1]
    drop = math.floor(ratio * K)
    if mode == "none" or drop == 0:
        return ordering
    if drop >= K:
        raise PadistillError(f"prune: removing {ratio:.0%} of {K} samples per class leaves none")
    if mode == "hard":
        return ordering[:, : K - drop]
    return ordering[:, drop:]
