"""The sweep table's numbers: mean ± std (n) per cell and paired differences with a 95 % t-interval.

Input per cell and net: a list of replicates (one per distillation seed), each the list of evaluation accuracies
of its runs (fractions; run r of every cell used the same network initialisation and data order, so run r of
two cells is a pair).
- mean / std / n: over all runs of all replicates; std is numpy's default (ddof 0), as in every padistill
  evaluation table, so a one-replicate cell shows exactly its eval/results.json numbers.
- seed_std: with several distillation seeds, the std (ddof 0) of the per-seed means (the distillation's own
  variance); eval_std: the root of the mean within-seed variance (evaluation noise).
- paired difference against the baseline: with one replicate, d_r = acc_cell[r] - acc_base[r] over the common
  runs and the 95 % interval mean(d) ± t(0.975, n-1) · sd(d, ddof 1) / sqrt(n): evaluation noise only. With K > 1
  distillation seeds, one difference per seed (the mean over its paired runs) and the interval over the K seeds
  (t with K-1 degrees of freedom): it covers both the distillation's and the evaluation's variance.
"""

from __future__ import annotations

import math

import numpy as np


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution (scipy, which scikit-learn already requires)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def summarize(replicates: list[list[float]]) -> dict:
    accs = [a for rep in replicates for a in rep]
    out = {"n": len(accs), "mean": float(np.mean(accs)) if accs else math.nan,
           "std": float(np.std(accs)) if accs else math.nan, "seeds": len(replicates)}
    if len(replicates) > 1:
        means = [float(np.mean(r)) for r in replicates if r]
        out["seed_means"] = means
        out["seed_std"] = float(np.std(means)) if means else math.nan
        out["eval_std"] = float(np.sqrt(np.mean([np.var(r) for r in replicates if r]))) if means else math.nan
    return out


def paired_difference(cell: list[list[float]], base: list[list[float]], level: float = 0.95) -> dict:
    """Mean paired difference (cell - base) with its `level` t-interval; None where there is nothing to pair."""
    k = min(len(cell), len(base))
    pairs = []
    for i in range(k):
        m = min(len(cell[i]), len(base[i]))
        pairs.append([cell[i][r] - base[i][r] for r in range(m)])
    pairs = [p for p in pairs if p]
    if not pairs:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "unit": None}
    if len(pairs) == 1:
        d, unit = pairs[0], "eval runs"
    else:
        d, unit = [float(np.mean(p)) for p in pairs], "distill seeds"
    n = len(d)
    mean = float(np.mean(d))
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n, "unit": unit}
    half = t_quantile(0.5 + level / 2, n - 1) * float(np.std(d, ddof=1)) / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "unit": unit, "level": level}
