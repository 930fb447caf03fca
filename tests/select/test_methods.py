"""Selection rules against brute-force computations on tiny hand-made inputs (docs/methods/coresets.md)."""

from __future__ import annotations

import pytest
import torch

from padistill.errors import PadistillError
from padistill.select import methods as M


def _features(n=14, d=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def brute_herding(f, k, farthest=False):
    mu = f.mean(0)
    chosen = []
    for t in range(1, k + 1):
        target = t * mu - sum((f[s] for s in chosen), torch.zeros_like(mu))
        best, best_i = None, None
        for i in range(len(f)):
            if i in chosen:
                continue
            dist = float(torch.linalg.norm(target - f[i]))
            if best is None or (dist > best if farthest else dist < best):
                best, best_i = dist, i
        chosen.append(best_i)
    return chosen


def brute_kcenter(f, k, start):
    chosen = [start]
    while len(chosen) < k:
        best, best_i = None, None
        for i in range(len(f)):
            if i in chosen:
                continue
            nearest = min(float(torch.linalg.norm(f[i] - f[c])) for c in chosen)
            if best is None or nearest > best:
                best, best_i = nearest, i
        chosen.append(best_i)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_equals_brute_force(seed):
    f = _features(seed=seed)
    assert M.herding(f, 8).tolist() == brute_herding(f, 8)
    assert M.herding(f, 8, farthest=True).tolist() == brute_herding(f, 8, farthest=True)


def test_herding_first_pick_is_nearest_the_mean_and_compat_farthest():
    f = _features(n=20, seed=7)
    d = torch.linalg.norm(f - f.mean(0), dim=1)
    assert int(M.herding(f, 1)[0]) == int(d.argmin())
    assert int(M.herding(f, 1, farthest=True)[0]) == int(d.argmax())


def test_herding_ties_go_to_the_lowest_index():
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # mean 0, all at distance 1
    assert M.herding(f, 4).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("seed,start", [(0, 0), (1, 5), (2, 13)])
def test_kcenter_equals_brute_force(seed, start):
    f = _features(seed=seed)
    got = M.kcenter_greedy(f, 9, start).tolist()
    assert got == brute_kcenter(f, 9, start)
    assert got[1] == int(torch.linalg.norm(f - f[start], dim=1).argmax())  # second pick: farthest from the first


def test_kcenter_takes_every_point_without_repeats():
    f = _features(n=6, seed=4)
    assert sorted(M.kcenter_greedy(f, 6, 2).tolist()) == list(range(6))


def test_forgetting_counts_a_scripted_history():
    tr = M.MinibatchForgetting(4)
    # sample: 0 learned then forgotten twice; 1 learned once, never forgotten; 2 never learned; 3 forgotten once
    history = [([0, 1], [1, 0]), ([2, 3], [0, 1]), ([0, 3], [0, 0]), ([1, 0], [1, 1]), ([0, 2], [0, 0]),
               ([3, 1], [1, 1]), ([2, 0], [0, 1])]
    for rows, correct in history:
        tr.update(torch.tensor(rows), torch.tensor(correct, dtype=torch.bool))
    assert tr.events.tolist() == [2, 0, 0, 1]
    assert tr.learned.tolist() == [True, True, False, True]
    assert tr.scores("zero").tolist() == [2.0, 0.0, 0.0, 1.0]
    assert tr.scores("inf").tolist() == [2.0, 0.0, float("inf"), 1.0]


def test_forgetting_is_not_counted_from_the_initial_state():
    tr = M.MinibatchForgetting(2)
    tr.update(torch.tensor([0, 1]), torch.tensor([False, False]))  # wrong at the first forward: no event
    assert tr.events.tolist() == [0, 0]


def test_by_score_directions_and_seeded_ties():
    s = torch.tensor([5.0, 1.0, 3.0, 9.0, 7.0, 2.0, 8.0])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert sorted(M.by_score(s, 3, "easy", g()).tolist()) == [1, 2, 5]
    assert sorted(M.by_score(s, 3, "hard", g()).tolist()) == [3, 4, 6]
    assert sorted(M.by_score(s, 3, "middle", g()).tolist()) == [0, 2, 4]  # sorted: 1 2 3 5 7 8 9 -> 3 5 7
    ties = torch.zeros(50)
    a = M.by_score(ties, 5, "hard", torch.Generator().manual_seed(1))
    assert torch.equal(a, M.by_score(ties, 5, "hard", torch.Generator().manual_seed(1)))
    assert not torch.equal(a, M.by_score(ties, 5, "hard", torch.Generator().manual_seed(2)))
    assert a.tolist() != [0, 1, 2, 3, 4]
    inf = torch.tensor([1.0, float("inf"), 0.0])
    assert M.by_score(inf, 1, "hard", g()).tolist() == [1]
    with pytest.raises(PadistillError, match="NaN"):
        M.by_score(torch.tensor([0.0, float("nan")]), 1, "easy", g())


def _glister_problem(n=12, m=5, d=4, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(n, d), r(n, C), r(m, d), r(m, C)


def _flat_grad(h, z, label):
    e = torch.softmax(z, 0)
    e[label] -= 1
    return torch.cat([e, torch.outer(e, h).flatten()])


def brute_glister(h, z, hv, zv0, label, k, eta, static):
    C = z.shape[1]
    chosen = []
    zv = zv0.clone()
    for _ in range(k):
        gv = torch.stack([_flat_grad(hv[v], zv[v], label) for v in range(len(hv))]).mean(0)
        gains = [float(_flat_grad(h[i], z[i], label) @ gv) if i not in chosen else float("-inf")
                 for i in range(len(h))]
        chosen.append(max(range(len(h)), key=lambda i: (gains[i], -i)))
        if not static:
            gs = torch.stack([_flat_grad(h[i], z[i], label) for i in chosen]).mean(0)
            b, W = gs[:C], gs[C:].view(C, -1)
            zv = zv0 - eta * (b + hv @ W.T)  # validation logits after one step theta - eta * mean_S g
    return chosen


@pytest.mark.parametrize("seed", [0, 1])
def test_glister_equals_brute_force_with_and_without_the_update(seed):
    h, z, hv, zv = _glister_problem(seed=seed)
    for static in (False, True):
        got = M.glister(h, z, 1, hv, zv, 6, eta=0.5, static=static).tolist()
        assert got == brute_glister(h, z, hv, zv, 1, 6, 0.5, static)


def test_glister_static_is_the_top_k_of_the_initial_gains():
    h, z, hv, zv = _glister_problem(n=20, seed=3)
    gv = torch.stack([_flat_grad(hv[v], zv[v], 2) for v in range(len(hv))]).mean(0)
    gains = torch.stack([_flat_grad(h[i], z[i], 2) @ gv for i in range(len(h))])
    assert M.glister(h, z, 2, hv, zv, 7, eta=0.1, static=True).tolist() == gains.argsort(descending=True)[:7].tolist()
    # the update changes the choice on this problem (a large step)
    assert M.glister(h, z, 2, hv, zv, 7, eta=5.0).tolist() != gains.argsort(descending=True)[:7].tolist()


def test_budget_outside_a_class_is_refused():
    f = _features(n=4)
    for fn in (lambda: M.herding(f, 5), lambda: M.kcenter_greedy(f, 5, 0), lambda: M.herding(f, 0)):
        with pytest.raises(PadistillError, match="cannot choose"):
            fn()
