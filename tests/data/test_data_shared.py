"""The real CIFAR-10 (shared/data/cifar10.npz, tiled lossless WebP) through `load_dataset('cifar10')`."""

from __future__ import annotations

import time

import pytest
import torch

from padistill.data import load_dataset

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def cifar10(shared_dir):
    return load_dataset("cifar10", root=shared_dir / "data")


def test_real_cifar10_sizes_order_and_classes(cifar10):
    ds = cifar10
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert ds.y_train[9997:10000].tolist() == [1, 1, 5]  # end of data_batch_1
    assert ds.per_class_counts().tolist() == [5000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    # pixels roughly match the published CIFAR statistics
    assert ds.x_train[:5000].float().div(255).mean(dim=(0, 2, 3)).tolist() == pytest.approx(ds.mean, abs=0.02)


def test_real_cifar10_matches_published_orderings(cifar10, shared_dir):
    path = shared_dir / "data" / "pad-orderings" / "CIFAR10_GraNd.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    order = torch.load(path, weights_only=True)
    idx = cifar10.class_indices()
    for c in range(10):  # row c holds exactly the global train indices of class c
        assert torch.equal(torch.sort(order[c]).values, idx[c])


def test_real_cifar10_fingerprint_is_fast_and_stable(cifar10):
    t = time.perf_counter()
    fp = cifar10.fingerprint()
    assert time.perf_counter() - t < 3.0
    assert cifar10.fingerprint() == fp and len(fp) == 64
