"""PAD's data scheduler and static pruning (paper §3.2, App. A.2; spec §1.5, invariants §8.2-8.5)."""

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from padistill.config import ScheduleConfig
from padistill.errors import PadistillError
from padistill.filters.schedule import kept_columns, prune_ordering, scheduled_indices

README = ScheduleConfig()  # IR 0.75, AEE 20, R1 40 (r1 0.1), R2 60 (r2 0.2): the README / CIFAR-10 values
CIFAR100 = ScheduleConfig(add_end_epoch=40)  # paper Table 10: AEE 40 for CIFAR-100 / Tiny ImageNet


def synthetic_ordering(C: int, K: int, seed: int = 0) -> torch.Tensor:
    """[C, K]: row c = a random permutation of the indices of class c (labels = arange(C*K) % C)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([c + C * torch.randperm(K, generator=g) for c in range(C)])


def per_class(epoch, K, schedule):
    a, b = kept_columns(epoch, K, schedule)
    return b - a


def test_cifar10_counts_per_class():
    K = 5000
    expected = {0: 3750, 1: 3812, 2: 3875, 3: 3937, 4: 4000, 19: 4937}
    for e, n in expected.items():
        assert per_class(e, K, README) == n, e
    for e in range(20, 41):
        assert kept_columns(e, K, README) == (0, 5000)
    for e in range(41, 61):
        assert kept_columns(e, K, README) == (500, 5000)
    for e in range(61, 100):
        assert kept_columns(e, K, README) == (1000, 5000)


def test_cifar10_totals_by_phase():
    ordering = synthetic_ordering(10, 5000)
    assert len(scheduled_indices(ordering, 0, README)) == 37_500
    assert {len(scheduled_indices(ordering, e, README)) for e in range(20, 41)} == {50_000}
    assert {len(scheduled_indices(ordering, e, README)) for e in range(41, 61)} == {45_000}
    assert {len(scheduled_indices(ordering, e, README)) for e in range(61, 100)} == {40_000}


def test_cifar100_counts_per_class_k_from_the_data():
    K = 500  # never the reference's hard-coded 5000
    assert [per_class(e, K, CIFAR100) for e in range(4)] == [375, 378, 381, 384]
    assert per_class(40, K, CIFAR100) == 500
    counts = [per_class(e, K, CIFAR100) for e in range(41)]
    assert counts == sorted(counts)
    assert {per_class(e, K, CIFAR100) for e in range(41, 61)} == {450}
    assert {per_class(e, K, CIFAR100) for e in range(61, 100)} == {400}
    assert min(per_class(e, K, CIFAR100) for e in range(100)) > 0


def test_addition_phase_matches_the_reference_expression():
    """Counts are floor(p * K) of the float p the reference computes (spec §8.3)."""
    for K, sch in ((5000, README), (500, CIFAR100)):
        for e in range(sch.add_end_epoch + 1):
            p = min(1.0, sch.init_ratio + (1 - sch.init_ratio) * e / sch.add_end_epoch)
            assert per_class(e, K, sch) == math.floor(p * K)
            # and within one sample of the exact rational value
            exact = K * (sch.init_ratio + (1 - sch.init_ratio) * e / sch.add_end_epoch)
            assert abs(per_class(e, K, sch) - math.floor(exact)) <= 1


def test_subsets_are_nested_prefixes_then_suffixes_and_balanced():
    C, K = 10, 500
    ordering = synthetic_ordering(C, K, seed=1)
    labels = torch.arange(C * K) % C
    prev = None
    for e in range(100):
        idx = scheduled_indices(ordering, e, CIFAR100)
        counts = torch.bincount(labels[idx], minlength=C)
        assert len(set(counts.tolist())) == 1 and counts[0] > 0  # balanced, never empty
        a, b = kept_columns(e, K, CIFAR100)
        assert torch.equal(idx, ordering[:, a:b].reshape(-1))  # class-major, columns a..b-1 of every row
        if e <= CIFAR100.add_end_epoch and prev is not None:
            assert set(prev.tolist()) <= set(idx.tolist())  # S_e is a subset of S_{e+1}
        prev = idx
    # the removed samples are the EASIEST (first columns) of every class
    removed = set(ordering[:, :50].reshape(-1).tolist())
    assert not removed & set(scheduled_indices(ordering, 45, CIFAR100).tolist())
    assert set(ordering[:, 50:].reshape(-1).tolist()) == set(scheduled_indices(ordering, 45, CIFAR100).tolist())


def test_disabled_or_missing_schedule_keeps_everything():
    ordering = synthetic_ordering(3, 7)
    assert kept_columns(0, 7, ScheduleConfig(enabled=False)) == (0, 7)
    assert kept_columns(99, 7, None) == (0, 7)
    assert len(scheduled_indices(ordering, 0, ScheduleConfig(enabled=False))) == 21


def test_full_set_at_aee_even_when_the_float_falls_short():
    """Regression (found by the property test): 0.3031... + 0.6968... * 47 / 47 == 1 - 1ulp in float."""
    sch = ScheduleConfig(init_ratio=0.3031709133500812, add_end_epoch=47)
    assert sch.init_ratio + (1 - sch.init_ratio) * 47 / 47 < 1.0
    assert kept_columns(47, 2, sch) == (0, 2)


def test_removal_of_everything_is_an_error():
    sch = ScheduleConfig(rm_easy_ratio_first=1.0)
    with pytest.raises(PadistillError, match="leaves none"):
        kept_columns(41, 10, sch)


@given(C=st.integers(1, 6), K=st.integers(1, 600), ir=st.floats(0.0, 1.0), aee=st.integers(0, 60),
       gap1=st.integers(0, 40), gap2=st.integers(0, 40), r1=st.floats(0.0, 0.95), extra=st.floats(0.0, 0.95))
@settings(max_examples=150, deadline=None)
def test_property_counts_balance_and_nesting(C, K, ir, aee, gap1, gap2, r1, extra):
    r2 = min(0.95, r1 + extra)
    sch = ScheduleConfig(init_ratio=ir, add_end_epoch=aee, rm_epoch_first=aee + gap1, rm_epoch_second=aee + gap1 + gap2,
                         rm_easy_ratio_first=r1, rm_easy_ratio_second=r2)
    assume(math.floor(r2 * K) < K)
    ordering = synthetic_ordering(C, K, seed=K)
    prev_end = 0
    for e in range(aee + gap1 + gap2 + 3):
        a, b = kept_columns(e, K, sch)
        assert 0 <= a < b <= K  # never empty
        idx = scheduled_indices(ordering, e, sch)
        assert len(idx) == C * (b - a) and len(set(idx.tolist())) == len(idx)
        if e <= aee:
            p = 1.0 if e == aee else min(1.0, ir + (1 - ir) * e / aee)
            assert a == 0 and b == max(1, math.floor(p * K))
            assert b >= prev_end  # non-decreasing, prefixes => nested
            prev_end = b
            if e == aee:
                assert b == K
        elif e <= sch.rm_epoch_first:
            assert (a, b) == (0, K)
        elif e <= sch.rm_epoch_second:
            assert (a, b) == (math.floor(r1 * K), K)
        else:
            assert (a, b) == (math.floor(r2 * K), K)


def test_prune_ordering_static_fiex():
    ordering = synthetic_ordering(4, 10)
    assert torch.equal(prune_ordering(ordering, "hard", 0.3), ordering[:, :7])  # hardest = last columns
    assert torch.equal(prune_ordering(ordering, "easy", 0.3), ordering[:, 3:])
    assert prune_ordering(ordering, "none", 0.5) is ordering
    assert prune_ordering(ordering, "easy", 0.05) is ordering  # floor(0.5) = 0 removed
    with pytest.raises(PadistillError, match="leaves none"):
        prune_ordering(ordering, "easy", 1.0)
    with pytest.raises(PadistillError, match="mode must be"):
        prune_ordering(ordering, "middle", 0.0)


@given(K=st.integers(1, 300), ratio=st.floats(0.0, 0.99), mode=st.sampled_from(["hard", "easy"]))
@settings(max_examples=60, deadline=None)
def test_prune_property(K, ratio, mode):
    ordering = synthetic_ordering(3, K, seed=K)
    drop = math.floor(ratio * K)
    assume(drop < K)
    kept = prune_ordering(ordering, mode, ratio)
    assert kept.shape == (3, K - drop)
    row_set = set(ordering[0].tolist())
    assert set(kept[0].tolist()) <= row_set


def test_namespace_schedules_work_too():
    """The functions only read attributes (DC/DM pass their own objects)."""
    sch = SimpleNamespace(enabled=True, init_ratio=0.5, add_end_epoch=2, rm_epoch_first=3, rm_epoch_second=4,
                          rm_easy_ratio_first=0.25, rm_easy_ratio_second=0.5)
    assert [kept_columns(e, 8, sch) for e in range(6)] == [(0, 4), (0, 6), (0, 8), (0, 8), (2, 8), (4, 8)]


# ----- App. A.2's gradual removal (padistill's reading: the removed share ramps linearly from R1 to R2) -----

GRADUAL = ScheduleConfig(removal="gradual")  # IR 0.75, AEE 20, R1 40, R2 60, r2 0.2


def test_gradual_removal_counts_by_hand():
    """K = 5000, R1 40, R2 60, r2 0.2: epoch e in (40, 60] drops floor(0.2 * (e - 40) / 20 * 5000) = 50 (e - 40);
    from 60 on it drops 1000 like one-shot removal; everything before R1 is the one-shot scheduler's."""
    K = 5000
    for e in range(0, 41):
        assert kept_columns(e, K, GRADUAL) == kept_columns(e, K, README)
    for e in range(41, 61):
        assert kept_columns(e, K, GRADUAL) == (50 * (e - 40), K), e
    for e in (61, 80, 99):
        assert kept_columns(e, K, GRADUAL) == (1000, K)


@given(K=st.integers(1, 400), r1=st.integers(0, 4), span=st.integers(1, 30), r2=st.floats(0.0, 0.9))
@settings(max_examples=60, deadline=None)
def test_gradual_removal_is_monotone_and_ends_where_one_shot_ends(K, r1, span, r2):
    sch = ScheduleConfig(init_ratio=1.0, add_end_epoch=1, rm_epoch_first=r1 + 1, rm_epoch_second=r1 + 1 + span,
                         rm_easy_ratio_first=0.05, rm_easy_ratio_second=r2, removal="gradual")
    one = ScheduleConfig(**{**sch.__dict__, "removal": "oneshot"})
    starts = [kept_columns(e, K, sch)[0] for e in range(r1 + 1, r1 + span + 4)]
    assert starts[0] == 0 and starts == sorted(starts)  # nothing removed at R1, the share only grows
    R2 = r1 + 1 + span
    assert kept_columns(R2, K, sch)[0] == math.floor(r2 * K) == kept_columns(R2 + 1, K, one)[0]


def test_removal_mode_is_checked():
    with pytest.raises(PadistillError, match="removal"):
        kept_columns(50, 100, ScheduleConfig(removal="slowly"))


def test_schedule_settings_keep_old_keys_and_name_gradual():
    from padistill.filters.schedule import schedule_settings

    assert schedule_settings(ScheduleConfig(enabled=False, removal="gradual")) == {"enabled": False}
    plain = schedule_settings(README)
    assert "removal" not in plain and plain["init_ratio"] == 0.75 and plain["rm_easy_ratio_second"] == 0.2
    assert schedule_settings(GRADUAL) == {**plain, "removal": "gradual"}
