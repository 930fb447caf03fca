"""FIEX: the data scheduler (paper §3.2, App. A.2; spec §1.5, invariants §8.2-8.5).

Input: a per-class difficulty ordering `[C, N_c]` of global train indices (column 0 = easiest) and
the scheduler settings. Output: the global indices an expert trains on in a given epoch.

For epoch e (0-based), with K = N_c taken from the ordering (the reference hard-codes 5000, which
only works for CIFAR-10):
  e <= AEE       keep the first floor(p*K) columns, p = min(1, IR + (1-IR)*e/AEE)  (hard samples added last)
  AEE < e <= R1  all K columns
  R1 < e <= R2   drop the first floor(r1*K) columns (the easiest r1 of every class, in one shot)
  e > R2         drop the first floor(r2*K) columns (r2 is the TOTAL removed share)
With `removal: gradual` (the alternative of App. A.2 / Table 8a, "similar to the hard sample addition"; the paper
gives no formula, this is padistill's reading) the removed share grows linearly instead of in two steps:
  R1 < e <= R2   drop the first floor(q*K) columns, q = r2*(e-R1)/(R2-R1)  (q = r2 exactly at e = R2)
  e > R2         drop the first floor(r2*K) columns, as one-shot removal ends
so both modes remove the same total share by the same epoch; r1 is unused by the gradual mode.
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
    removal = getattr(schedule, "removal", "oneshot")
    r1, r2 = schedule.rm_easy_ratio_first, schedule.rm_easy_ratio_second
    R1, R2 = schedule.rm_epoch_first, schedule.rm_epoch_second
    if removal == "gradual":
        ratio = r2 if epoch >= R2 else r2 * (epoch - R1) / (R2 - R1)
    elif removal == "oneshot":
        ratio = r1 if epoch <= R2 else r2
    else:
        raise PadistillError(f"scheduler: 'removal' must be oneshot or gradual; got {removal!r}")
    start = int(ratio * K)
    if start >= K:
        raise PadistillError(f"scheduler: removing {ratio:.0%} of {K} samples per class leaves none")
    return start, K


def schedule_settings(schedule) -> dict:
    """The scheduler fields that decide the data (what a stage key hashes): nothing but `enabled` when it is off,
    and `removal` only when it is not the default one-shot (so folders made before that option keep their keys)."""
    if schedule is None or not schedule.enabled:
        return {"enabled": False}
    out = {k: getattr(schedule, k) for k in ("enabled", "init_ratio", "add_end_epoch", "rm_epoch_first",
                                              "rm_easy_ratio_first", "rm_epoch_second", "rm_easy_ratio_second")}
    if getattr(schedule, "removal", "oneshot") != "oneshot":
        out["removal"] = schedule.removal
    return out


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
