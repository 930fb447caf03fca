"""Coreset selection rules, one class at a time (docs/methods/coresets.md; coreset spec §2).

Pure functions on CPU tensors: features / scores of ONE class in, positions (0..n-1 within that class) of the
chosen samples out, in the order they were chosen. Distances and gains are computed in float64 so that ties and
near-ties resolve the same way on every machine; ties go to the lowest position unless a seeded generator is
given for a random tie-break.

- herding:   Welling (2009) / iCaRL: at step t add x not in S minimising ||t*mu - sum_S phi - phi_x||;
             `farthest=True` is DeepCore's argmax (its code picks the sample farthest from that target first).
- k-center:  Sener & Savarese (2018) greedy: start at a given point, then repeatedly add the point whose distance
             to its nearest chosen centre is largest; d(a, b) = sqrt(max(|a|^2 + |b|^2 - 2ab, 1e-12)).
- forgetting: `MinibatchForgetting` counts correct -> incorrect transitions of each sample between consecutive
             minibatch forwards of the selection training (Toneva et al. 2019, counted as DeepCore does).
- glister:   Killamsetty et al. (2021) greedy with last-layer gradients g_i = [p_i - y_i ; (p_i - y_i) h_i^T]:
             gain(e) = <g_e, mean validation gradient>, and after each pick the validation logits are those of
             theta - eta * mean_S g (the update DeepCore meant to run); `static=True` skips the update
             (DeepCore's behaviour, issue #14): the top-k of the initial gains.
- scores:    the k lowest (easy), highest (hard) or central (middle) scores, ties broken by a seeded permutation.
"""

from __future__ import annotations

import torch

from padistill.errors import PadistillError


def _check_k(k: int, n: int, what: str) -> None:
    if not 1 <= k <= n:
        raise PadistillError(f"{what}: cannot choose {k} of {n} samples")


def herding(features: torch.Tensor, k: int, farthest: bool = False) -> torch.Tensor:
    """Positions of k samples chosen by herding on `features` [n, d] (ties: lowest position)."""
    f = features.detach().to("cpu", torch.float64).flatten(1)
    n = f.shape[0]
    _check_k(k, n, "herding")
    mu = f.mean(0)
    sq = f.square().sum(1)
    total = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool)
    picks = []
    for t in range(1, k + 1):
        r = t * mu - total
        d2 = r.square().sum() - 2 * (f @ r) + sq  # ||r - phi_x||^2 for every x
        d2[taken] = float("-inf") if farthest else float("inf")
        i = int(d2.argmax() if farthest else d2.argmin())
        picks.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(picks, dtype=torch.int64)


def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)] Euclidean distances, sqrt(max(|a|^2 + |b|^2 - 2ab, 1e-12)) (as DeepCore computes them)."""
    d2 = a.square().sum(1, keepdim=True) + b.square().sum(1).unsqueeze(0) - 2 * (a @ b.T)
    return d2.clamp_min(1e-12).sqrt()


def kcenter_greedy(features: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """Positions of k samples chosen by k-center greedy from `start` (ties: lowest position)."""
    f = features.detach().to("cpu", torch.float64).flatten(1)
    n = f.shape[0]
    _check_k(k, n, "kcenter")
    if not 0 <= start < n:
        raise PadistillError(f"kcenter: start position {start} outside 0..{n - 1}")
    min_d = pairwise_distance(f, f[start:start + 1]).squeeze(1)
    min_d[start] = -1.0
    picks = [start]
    for _ in range(k - 1):
        i = int(min_d.argmax())  # the first maximum on ties
        picks.append(i)
        min_d = torch.minimum(min_d, pairwise_distance(f, f[i:i + 1]).squeeze(1))
        min_d[i] = -1.0
    return torch.tensor(picks, dtype=torch.int64)


class MinibatchForgetting:
    """Forgetting events counted at every minibatch forward of a training run.

    `update(rows, correct)`: the samples `rows` were just classified (`correct`: bool per row). An event is a
    sample that was correct at its previous forward and is wrong now; the previous state starts as 'wrong'.
    """

    def __init__(self, n: int):
        self.prev = torch.zeros(n, dtype=torch.bool)
        self.learned = torch.zeros(n, dtype=torch.bool)
        self.events = torch.zeros(n, dtype=torch.int64)

    def update(self, rows: torch.Tensor, correct: torch.Tensor) -> None:
        rows = rows.detach().cpu().long()
        correct = correct.detach().cpu().bool()
        if rows.shape != correct.shape:
            raise ValueError(f"forgetting: {len(rows)} rows but {len(correct)} outcomes")
        self.events[rows] += (self.prev[rows] & ~correct).long()
        self.prev[rows] = correct
        self.learned[rows] |= correct

    def scores(self, never_learned: str = "zero") -> torch.Tensor:
        """float64 [n]: the counts; samples never classified correctly score 0 ('zero', DeepCore) or +inf ('inf')."""
        s = self.events.double()
        if never_learned == "inf":
            s[~self.learned] = float("inf")
        elif never_learned != "zero":
            raise PadistillError(f"select.never_learned: expected zero or inf; got {never_learned!r}")
        return s

    def state_dict(self) -> dict:
        return {"prev": self.prev.clone(), "learned": self.learned.clone(), "events": self.events.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("prev", "learned", "events"):
            t = state[name]
            ref = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.shape != ref.shape or t.dtype != ref.dtype:
                raise ValueError(f"forgetting.{name}: expected {ref.dtype} {list(ref.shape)}")
            setattr(self, name, t.clone())


def by_score(scores: torch.Tensor, k: int, which: str, generator: torch.Generator) -> torch.Tensor:
    """Positions of the k easiest (lowest), hardest (highest) or middle scores; ties in a seeded random order."""
    s = scores.detach().to("cpu", torch.float64)
    n = len(s)
    _check_k(k, n, which)
    if torch.isnan(s).any():
        raise PadistillError(f"{which}: the scores contain NaN")
    perm = torch.randperm(n, generator=generator)
    if which == "hard":
        order = torch.argsort(-s[perm], stable=True)[:k]
    elif which == "easy":
        order = torch.argsort(s[perm], stable=True)[:k]
    elif which == "middle":
        a = (n - k) // 2
        order = torch.argsort(s[perm], stable=True)[a:a + k]
    else:
        raise PadistillError(f"select: unknown score direction {which!r} (easy, hard or middle)")
    return perm[order]


def glister(h: torch.Tensor, logits: torch.Tensor, label: int, h_val: torch.Tensor, logits_val: torch.Tensor,
            k: int, eta: float, static: bool = False) -> torch.Tensor:
    """Positions of k training samples of class `label` chosen by Glister's greedy (ties: lowest position).

    h [n, d], logits [n, C]: embeddings (inputs of the last linear layer) and logits of the class's training
    samples; h_val [m, d], logits_val [m, C]: the same for the class's validation samples (all labelled `label`).
    Last-layer gradients of the summed cross-entropy: g_i = [e_i ; e_i h_i^T] with e_i = softmax(z_i) - y_i.
    The inner products use the Gram matrix h h_val^T, so no C*(d+1)-long gradient is ever formed.
    """
    h = h.detach().to("cpu", torch.float64).flatten(1)
    hv = h_val.detach().to("cpu", torch.float64).flatten(1)
    z = logits.detach().to("cpu", torch.float64)
    zv0 = logits_val.detach().to("cpu", torch.float64)
    n, m = len(h), len(hv)
    _check_k(k, n, "glister")
    if m == 0:
        raise PadistillError("glister: the class has no validation samples (set data.val_per_class > 0)")
    C = z.shape[1]
    onehot = torch.zeros(C, dtype=torch.float64)
    onehot[label] = 1.0
    e = torch.softmax(z, 1) - onehot  # [n, C]
    gram = h @ hv.T  # [n, m]: h_i . h_v

    def gains(zv: torch.Tensor) -> torch.Tensor:
        ev = torch.softmax(zv, 1) - onehot  # [m, C]
        b_bar = ev.mean(0)  # bias part of the mean validation gradient
        # weight part: <e_i h_i^T, mean_v e_v h_v^T> = sum_c e_ic * mean_v (e_vc * h_i.h_v)
        return e @ b_bar + (e * (gram @ ev) / m).sum(1)

    g = gains(zv0)
    taken = torch.zeros(n, dtype=torch.bool)
    sum_e = torch.zeros(C, dtype=torch.float64)  # sum of the selected bias gradients
    sum_ke = torch.zeros(m, C, dtype=torch.float64)  # sum_i (h_v . h_i) e_i: validation logits' weight shift
    picks = []
    for t in range(1, k + 1):
        g = g.masked_fill(taken, float("-inf"))
        i = int(g.argmax())
        picks.append(i)
        taken[i] = True
        if static or t == k:
            continue
        sum_e += e[i]
        sum_ke += gram[i].unsqueeze(1) * e[i].unsqueeze(0)
        g = gains(zv0 - eta * (sum_e + sum_ke) / t)  # logits of theta - eta * (mean gradient of the selected)
    return torch.tensor(picks, dtype=torch.int64)
