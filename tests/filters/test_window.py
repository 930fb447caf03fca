"""Start-epoch window (spec §3.7, §8.17)."""

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from padistill.filters.window import sample_start_epoch, start_epoch_bound
from padistill.utils.rng import generator


def window(**kw):
    base = dict(sequential=True, min_start_epoch=0, current_max_start_epoch=10, max_start_epoch=20,
                expansion_end_iteration=1000, expert_epochs=2)
    base.update(kw)
    return SimpleNamespace(**base)


def test_cifar10_ipc10_example():
    d = window()
    assert start_epoch_bound(0, d) == 10
    assert start_epoch_bound(499, d) == 14
    assert start_epoch_bound(1000, d) == 20
    assert start_epoch_bound(50_000, d) == 20
    assert start_epoch_bound(3, window(sequential=False)) == 20


@given(st.integers(0, 5), st.integers(1, 10), st.integers(0, 10), st.integers(1, 3000), st.integers(0, 5000))
@settings(max_examples=60, deadline=None)
def test_sampled_epochs_stay_in_window(tmin, span1, span2, exp_end, it):
    d = window(min_start_epoch=tmin, current_max_start_epoch=tmin + span1,
               max_start_epoch=tmin + span1 + span2, expansion_end_iteration=exp_end)
    ub = start_epoch_bound(it, d)
    assert d.current_max_start_epoch <= ub <= d.max_start_epoch
    if it >= exp_end:
        assert ub == d.max_start_epoch
    g = generator(0, "w", it)
    for _ in range(20):
        t = sample_start_epoch(it, d, g)
        assert tmin <= t <= ub - 1
        assert t != d.max_start_epoch


def test_all_window_values_reached():
    d = window(sequential=False, min_start_epoch=3, max_start_epoch=7)
    g = generator(1, "w")
    seen = {sample_start_epoch(0, d, g) for _ in range(400)}
    assert seen == {3, 4, 5, 6}


def test_expansion_end_of_one_or_zero_iterations():
    """Interval 1: the bound is T at iteration 0 and T+ from iteration 1; 0 (or less): T+ from the start."""
    assert [start_epoch_bound(it, window(expansion_end_iteration=1)) for it in (0, 1, 2)] == [10, 20, 20]
    assert start_epoch_bound(0, window(expansion_end_iteration=0)) == 20
    assert start_epoch_bound(0, window(expansion_end_iteration=-5)) == 20


def test_draws_come_from_the_given_generator_only():
    """A resumed run replays a start epoch from (seed, iteration) alone: the global RNG must not matter."""
    import torch

    d = window(sequential=False, min_start_epoch=0, max_start_epoch=1000)
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        g = generator(5, "w")
        draws.append([sample_start_epoch(0, d, g) for _ in range(5)])
    assert draws[0] == draws[1]
    assert draws[0] != [sample_start_epoch(0, d, generator(6, "w")) for _ in range(5)]
