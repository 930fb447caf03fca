"""Difficulty orderings: building, validating (spec §8.1) and importing published PAD files (spec §1.4)."""

import pytest
import torch

from padistill.errors import PadistillError
from padistill.filters.schedule import scheduled_indices
from padistill.scores import import_ordering, load_ordering, ordering_from_scores, validate_ordering
from padistill.utils.io import atomic_save

# A synthetic dataset with known labels: 3 classes x 4 samples, interleaved.
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
GOOD = torch.tensor([[9, 0, 6, 3], [1, 10, 4, 7], [11, 8, 5, 2]])


def test_valid_table_passes_and_is_returned():
    assert torch.equal(validate_ordering(GOOD, LABELS), GOOD)


@pytest.mark.parametrize("table, message", [
    (GOOD.flip(0), "row 0 holds index 11"),  # rows in the wrong class order
    (GOOD.to(torch.int32), "expected dtype int64"),
    (GOOD.float(), "expected dtype int64"),
    (GOOD[:2], "2 rows, the dataset has 3 classes"),
    (torch.where(GOOD == 11, torch.tensor(12), GOOD), r"indices must lie in \[0, 12\)"),
    (torch.where(GOOD == 11, torch.tensor(-1), GOOD), r"indices must lie in \[0, 12\)"),
    (torch.where(GOOD == 8, torch.tensor(11), GOOD), "indices repeat"),
    (GOOD[:, :3], "row 0 has 3 indices, class 0 has 4"),
    (GOOD.reshape(1, 3, 4), "expected 2 dimensions"),
    ([[9, 0, 6, 3]], "expected a tensor"),
])
def test_invalid_tables_give_one_line_errors(table, message):
    with pytest.raises(PadistillError, match=message) as err:
        validate_ordering(table, LABELS, where="x.pt")
    assert "\n" not in str(err.value) and str(err.value).startswith("x.pt: ")


def test_one_dimensional_global_ordering_is_refused_clearly():
    """PAD's CIFAR10_ConvNet.pt is 1-D [50000], global and hardest-first (spec §1.4)."""
    with pytest.raises(PadistillError, match="1-D global ordering .*CIFAR10_ConvNet"):
        validate_ordering(torch.randperm(12), LABELS, where="CIFAR10_ConvNet.pt")


def test_truncated_rows_are_valid_only_when_not_complete():
    validate_ordering(GOOD[:, 1:], LABELS, complete=False)
    with pytest.raises(PadistillError, match="permutation of its class"):
        validate_ordering(GOOD[:, 1:], LABELS, complete=True)


def test_load_ordering_from_file(tmp_path):
    path = tmp_path / "CIFAR_like.pt"
    atomic_save(GOOD, path)
    assert torch.equal(load_ordering(path, LABELS), GOOD)
    atomic_save(torch.randperm(12), tmp_path / "global.pt")
    with pytest.raises(PadistillError, match="1-D global ordering"):
        load_ordering(tmp_path / "global.pt", LABELS)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(PadistillError, match="junk.pt: cannot read difficulty ordering"):
        load_ordering(tmp_path / "junk.pt", LABELS)
    with pytest.raises(PadistillError, match="not found"):
        load_ordering(tmp_path / "missing.pt", LABELS)


def test_files_that_need_code_execution_are_refused(tmp_path):
    """weights_only=True: a pickle of an arbitrary object is rejected, never executed."""
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(pytest.approx(1), protocol=2))
    with pytest.raises(PadistillError, match="cannot read"):
        load_ordering(tmp_path / "evil.pt", LABELS)


def test_ordering_from_scores_sorts_easiest_first_per_class():
    scores = torch.tensor([5., 1., 0., 4., 2., 9., 3., 3., 7., 1., 0., 8.])
    ordering, dropped = ordering_from_scores(scores, LABELS, 3)
    assert dropped == [0, 0, 0]
    # class 0 = indices 0,3,6,9 with scores 5,4,3,1 -> 9,6,3,0 ; class 1 = 1,4,7,10 -> scores 1,2,3,0
    assert ordering.tolist() == [[9, 6, 3, 0], [10, 1, 4, 7], [2, 8, 11, 5]]
    validate_ordering(ordering, LABELS)


def test_ties_are_broken_by_the_tiebreak_then_by_index():
    scores = torch.zeros(12)
    ordering, _ = ordering_from_scores(scores, LABELS, 3)
    assert ordering[0].tolist() == [0, 3, 6, 9]
    tiebreak = -torch.arange(12.0)
    ordering, _ = ordering_from_scores(scores, LABELS, 3, tiebreak=tiebreak)
    assert ordering[0].tolist() == [9, 6, 3, 0]


def test_unbalanced_classes_keep_the_hardest_of_each_class():
    """Decision (scores/ordering.py): rows are cut to the smallest class, dropping each class's EASIEST surplus."""
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    scores = torch.arange(12.0).flip(0)  # index 0 is the hardest
    ordering, dropped = ordering_from_scores(scores, labels, 3)
    assert ordering.shape == (3, 3) and dropped == [2, 0, 1]
    assert ordering[0].tolist() == [2, 1, 0]  # the 3 hardest of class 0 (indices 4, 3 dropped: easiest)
    assert ordering[2].tolist() == [10, 9, 8]
    validate_ordering(ordering, labels, complete=False)
    for c in range(3):
        kept = set(ordering[c].tolist())
        rest = [i for i in range(12) if labels[i] == c and i not in kept]
        assert all(scores[i] <= scores[ordering[c]].min() for i in rest)


def test_non_finite_scores_are_refused():
    with pytest.raises(PadistillError, match="non-finite"):
        ordering_from_scores(torch.tensor([0., float("nan"), 1.]), torch.tensor([0, 0, 0]), 1)


def test_import_with_a_validation_hold_out_maps_to_the_kept_training_set(balanced_npz, balanced_config):
    from padistill.context import prepare

    C, PER_CLASS = balanced_config.classes, balanced_config.per_class
    cfg = balanced_config("data.val_per_class=2")
    prepared = prepare(cfg, log=lambda *_: None)
    from padistill.data import load_dataset

    full = load_dataset("npz", path=str(balanced_npz))
    g = torch.Generator().manual_seed(0)
    table = torch.stack([idx[torch.randperm(len(idx), generator=g)] for idx in full.class_indices()])
    path = balanced_npz.parent / "published.pt"
    atomic_save(table, path)
    mapped = import_ordering(path, prepared)
    assert mapped.shape == (C, PER_CLASS - 2)
    # the same images, in the same order, minus the held-out ones
    orig = prepared.train_index[mapped]
    for c in range(C):
        expected = [int(i) for i in table[c] if int(i) in set(prepared.train_index.tolist())]
        assert orig[c].tolist() == expected
    validate_ordering(mapped, prepared.y_train)
    # a table for another dataset (labels permuted) is refused against the ORIGINAL labels
    atomic_save(table.roll(1, 0), path)
    with pytest.raises(PadistillError, match="row 0 holds index"):
        import_ordering(path, prepared)


# --------------------------------------------------------------------------------------- published files


@pytest.fixture(scope="module")
def cifar10(shared_dir):
    from padistill.data import load_dataset

    return load_dataset("cifar10", root=shared_dir / "data")


@pytest.mark.shared
@pytest.mark.parametrize("name", ["CIFAR10_GraNd.pt", "CIFAR10_Uncertainty.pt"])
def test_published_cifar10_orderings_validate_against_the_real_labels(shared_dir, cifar10, name):
    path = shared_dir / "data" / "pad-orderings" / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    table = load_ordering(path, cifar10)
    assert table.shape == (10, 5000) and table.dtype == torch.int64
    sizes = [len(scheduled_indices(table, e, None)) for e in (0,)]
    assert sizes == [50_000]
    from padistill.config import ScheduleConfig

    first = scheduled_indices(table, 0, ScheduleConfig())
    assert len(first) == 37_500 and torch.bincount(cifar10.y_train[first]).tolist() == [3750] * 10


@pytest.mark.shared
@pytest.mark.parametrize("name, shape", [("CIFAR100_GraNd.pt", (100, 500)), ("CIFAR100_Uncertainty.pt", (100, 500)),
                                         ("TinyImageNet_GraNd.pt", (200, 500))])
def test_published_orderings_without_local_data_are_per_class_permutations(shared_dir, name, shape):
    """No CIFAR-100 / Tiny images in shared/: check the structure; Tiny's ImageFolder order is class-major."""
    path = shared_dir / "data" / "pad-orderings" / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    from padistill.utils.io import load_tensors

    table = load_tensors(path)
    assert tuple(table.shape) == shape
    n = shape[0] * shape[1]
    assert torch.equal(torch.sort(table.reshape(-1)).values, torch.arange(n))
    if name.startswith("Tiny"):
        labels = torch.arange(n) // 500  # ImageFolder order: 500 images of class 0, then class 1, ...
        validate_ordering(table, labels, where=name)
