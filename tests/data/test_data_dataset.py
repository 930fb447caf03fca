"""Dataset object: per-class views, fingerprint, validation, subsets, hold-out split; registry; digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from padistill.data import Dataset, default_data_root, list_datasets, load_dataset, register_dataset
from padistill.data import registry as registry_mod
from padistill.errors import PadistillError


def _toy(n_per_class=(5, 7, 6), seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    y = y[torch.randperm(len(y), generator=g)]
    x = torch.randint(0, 256, (len(y), 3, 4, 4), dtype=torch.uint8, generator=g)
    ds = Dataset("toy", x, y, x[:4].clone(), y[:4].clone(), ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3)
    return ds.validate()


def test_shape_facts_and_class_indices():
    ds = _toy()
    assert (ds.num_classes, ds.channels, ds.image_size) == (3, 3, (4, 4))
    assert ds.per_class_counts().tolist() == [5, 7, 6]
    for c, idx in enumerate(ds.class_indices()):
        assert idx.dtype == torch.int64
        assert idx.tolist() == torch.nonzero(ds.y_train == c).flatten().tolist()  # ascending global indices


def test_fingerprint_cached_and_sensitive():
    a, b = _toy(), _toy()
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    x = a.x_train.clone()
    x[0, 0, 0, 0] ^= 1
    changed = Dataset("toy", x, a.y_train, a.x_test, a.y_test, a.class_names, a.mean, a.std)
    assert changed.fingerprint() != a.fingerprint()
    renamed = Dataset("toy", a.x_train, a.y_train, a.x_test, a.y_test, ["a", "b", "d"], a.mean, a.std)
    assert renamed.fingerprint() != a.fingerprint()


def test_validate_errors():
    ds = _toy()
    cases = [
        (dict(x_train=ds.x_train.float()), "x_train must be a uint8 tensor"),
        (dict(y_train=ds.y_train.int()), "y_train must be an int64 tensor"),
        (dict(y_train=ds.y_train[:-1]), "x_train has 18 images but y_train has 17 labels"),
        (dict(y_test=torch.tensor([0, 1, 2, 3])), r"y_test values must lie in \[0, 3\)"),
        (dict(x_test=ds.x_test[:, :1]), "test images have shape"),
        (dict(std=(0.2, 0.0, 0.2)), "std values must be positive"),
        (dict(mean=(0.5,)), "mean has 1 values, expected one per channel"),
        (dict(y_train=torch.where(ds.y_train == 1, 0, ds.y_train)), "class.*'b'.* have no training images"),
    ]
    for change, pattern in cases:
        fields = dict(name=ds.name, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                      y_test=ds.y_test, class_names=ds.class_names, mean=ds.mean, std=ds.std)
        fields.update(change)
        with pytest.raises(PadistillError, match=pattern):
            Dataset(**fields).validate()


def test_subset_train_keeps_order():
    ds = _toy()
    sub = ds.subset_train([5, 0, 3])
    assert torch.equal(sub.x_train, ds.x_train[[5, 0, 3]])
    assert sub.y_train.tolist() == ds.y_train[[5, 0, 3]].tolist()
    assert sub.x_test is ds.x_test
    assert len(ds.subset_train([]).y_train) == 0
    with pytest.raises(PadistillError, match=r"values must lie in \[0, 18\)"):
        ds.subset_train([0, 18])
    with pytest.raises(PadistillError, match="1-D integer index list"):
        ds.subset_train(torch.tensor([0.5]))


def test_hold_out_validation():
    ds = _toy()
    rest, xv, yv, kept = ds.hold_out_validation(per_class=2, seed=3)
    assert xv.dtype == torch.uint8 and yv.dtype == torch.int64 and kept.dtype == torch.int64
    assert yv.tolist() == [0, 0, 1, 1, 2, 2]
    assert rest.per_class_counts().tolist() == [3, 5, 4]
    assert torch.equal(rest.x_train, ds.x_train[kept]) and torch.equal(rest.y_train, ds.y_train[kept])
    assert kept.tolist() == sorted(kept.tolist())  # remaining images keep dataset order
    # validation images are exactly the train images not kept (disjoint, complete)
    held = sorted(set(range(len(ds.y_train))) - set(kept.tolist()))
    assert len(held) == 6
    assert sorted(map(bytes, (t.numpy().tobytes() for t in xv))) == \
        sorted(map(bytes, (ds.x_train[i].numpy().tobytes() for i in held)))
    # deterministic for a seed, different for another, independent of the global RNG
    torch.manual_seed(123)
    again = ds.hold_out_validation(per_class=2, seed=3)
    assert torch.equal(again[3], kept) and torch.equal(again[1], xv)
    assert any(not torch.equal(ds.hold_out_validation(2, s)[3], kept) for s in range(4, 10))
    with pytest.raises(PadistillError, match=r"per_class must be in \[0, 5\)"):
        ds.hold_out_validation(per_class=5, seed=0)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names_aliases_and_errors(monkeypatch, tmp_path):
    assert list_datasets() == sorted(["cifar10", "cifar100", "digits", "hf", "imagefolder", "npz", "tinyimagenet"])
    with pytest.raises(PadistillError, match="unknown name 'mnist' .*known: cifar10, cifar100, digits"):
        load_dataset("mnist")
    with pytest.raises(PadistillError, match="digits: unknown option 'bogus' .*test_per_class"):
        load_dataset("digits", bogus=1)
    assert load_dataset("DIGITS").name == "digits"
    monkeypatch.setenv("PADISTILL_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("PADISTILL_DATA")
    assert default_data_root() == Path.home() / ".cache" / "padistill" / "data"


def test_register_custom_loader(tmp_path):
    seen = {}

    @register_dataset("toyset")
    def _load(root, download, k: int = 1):
        seen.update(root=root, download=download, k=k)
        return _toy()

    try:
        assert "toyset" in list_datasets()
        ds = load_dataset("toyset", root=tmp_path, download=True, k=4)
        assert ds.name == "toy" and seen == {"root": tmp_path, "download": True, "k": 4}
        with pytest.raises(PadistillError, match="already registered"):
            register_dataset("toyset")(lambda root, download: None)
    finally:
        registry_mod._LOADERS.pop("toyset", None)


# ----------------------------------------------------------------------------------------------- digits
def test_digits_split_and_values():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.x_train.shape == (1497, 1, 8, 8) and ds.x_test.shape == (300, 1, 8, 8)
    assert ds.class_names == [str(i) for i in range(10)]
    assert torch.bincount(ds.y_test).tolist() == [30] * 10
    raw = load_digits()
    want = np.rint(raw.data * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    assert int(want.max()) == 255
    assert torch.equal(ds.x_train[0], torch.from_numpy(want[0]))
    last0 = np.flatnonzero(raw.target == 0)[-30:]  # the last 30 zeros in dataset order are the test zeros
    assert torch.equal(ds.x_test[ds.y_test == 0], torch.from_numpy(want[last0]))
    assert load_dataset("digits", test_per_class=0).x_test.shape[0] == 0
    with pytest.raises(PadistillError, match="test_per_class must be in"):
        load_dataset("digits", test_per_class=500)


NEEDS_NO_FILES = {"digits"}  # embedded (scikit-learn's copy); every other built-in loader reads files under root


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_loader_on_an_empty_root(tmp_path, name):
    """Digits needs no files; every other loader refuses an empty root in one line naming it."""
    if name in NEEDS_NO_FILES:
        ds = load_dataset(name, root=tmp_path / "empty")
        assert ds.validate() is ds and len(ds.y_train) > 0
        return
    with pytest.raises(PadistillError) as err:
        load_dataset(name, root=tmp_path / "empty")
    assert "\n" not in str(err.value) and str(tmp_path / "empty") in str(err.value)
