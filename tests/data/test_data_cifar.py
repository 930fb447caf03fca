"""CIFAR-10/100 loaders on pickles written in the official format, the npz fallback, and bad inputs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from padistill.data import load_dataset
from padistill.data.safe_pickle import safe_unpickle
from padistill.errors import PadistillError


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_pickles_order_and_content(tmp_path, builders, protocol):
    batches = builders.cifar10(tmp_path, per_batch=6, protocol=protocol)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.name == "cifar10"
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (30, 3, 32, 32)
    assert ds.y_train.dtype == torch.int64 and ds.x_test.shape == (6, 3, 32, 32)
    # train = data_batch_1..5 concatenated in that order; rows are channel-major RGB
    order = [f"data_batch_{i}" for i in range(1, 6)]
    want_x = np.concatenate([batches[b][0] for b in order]).reshape(30, 3, 32, 32)
    want_y = sum((batches[b][1] for b in order), [])
    assert torch.equal(ds.x_train, torch.from_numpy(want_x))
    assert ds.y_train.tolist() == want_y
    assert ds.y_test.tolist() == batches["test_batch"][1]
    # the green plane starts at 1024
    assert int(ds.x_train[0, 1, 0, 0]) == int(batches["data_batch_1"][0][0, 1024])
    assert ds.class_names == builders.cifar10_names
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)
    for c, idx in enumerate(ds.class_indices()):
        assert idx.tolist() == [i for i, y in enumerate(want_y) if y == c]


def test_cifar100_fine_labels(tmp_path, builders):
    arrays = builders.cifar100(tmp_path)
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.num_classes == 100 and ds.class_names[7] == "class07"
    assert ds.y_train.tolist() == arrays["train"][1]
    assert torch.equal(ds.x_test, torch.from_numpy(arrays["test"][0].reshape(-1, 3, 32, 32)))
    assert ds.std == (0.2023, 0.1994, 0.2010)  # the CIFAR constants are used for CIFAR-100 too


def test_missing_folder_explains_where_and_download(tmp_path):
    with pytest.raises(PadistillError, match="cifar-10-batches-py/ in .*--download") as e:
        load_dataset("cifar10", root=tmp_path / "nowhere")
    _one_line(e)
    with pytest.raises(PadistillError, match="cifar-100-python/"):
        load_dataset("cifar100", root=tmp_path)


def test_incomplete_folder(tmp_path, builders):
    builders.cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(PadistillError, match="incomplete, missing data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_truncated_pickle(tmp_path, builders):
    builders.cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(PadistillError, match="data_batch_2: corrupt or truncated pickle") as e:
        load_dataset("cifar10", root=tmp_path)
    _one_line(e)


def test_garbage_pickle(tmp_path, builders):
    builders.cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(PadistillError, match="test_batch: corrupt or truncated pickle"):
        load_dataset("cifar10", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_forbidden_global_is_refused(tmp_path, builders):
    builders.cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    pattern = r"data_batch_1: refusing to unpickle (posix|os|nt)\.system"
    with pytest.raises(PadistillError, match=pattern) as e:
        load_dataset("cifar10", root=tmp_path)
    _one_line(e)


def test_safe_unpickle_refuses_builtins(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(print, protocol=2))
    with pytest.raises(PadistillError, match=r"refusing to unpickle (__builtin__|builtins)\.print"):
        safe_unpickle(p)


def test_wrong_fields(tmp_path, builders):
    builders.cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    p.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, protocol=2))
    with pytest.raises(PadistillError, match=r"data_batch_4: field 'data' must be a uint8 array \[n, 3072\]"):
        load_dataset("cifar10", root=tmp_path)
    p.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, protocol=2))
    with pytest.raises(PadistillError, match=r"data_batch_4: labels must lie in \[0, 10\)"):
        load_dataset("cifar10", root=tmp_path)
    p.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(PadistillError, match="field 'labels' must be 3 integer labels"):
        load_dataset("cifar10", root=tmp_path)


def test_npz_fallback_plain_layout(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)  # NHWC
    y = np.arange(20) % 10
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=y.astype(np.uint8), x_test=x[:10], y_test=y[:10])
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32)
    assert torch.equal(ds.x_train, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.class_names[0] == "airplane" and ds.mean == (0.4914, 0.4822, 0.4465)


def test_npz_fallback_wrong_image_size(tmp_path):
    x = np.zeros((4, 3, 16, 16), np.uint8)
    y = np.zeros(4, np.int64)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(PadistillError, match=r"cifar10.npz: expected cifar10 images \[3, 32, 32\]"):
        load_dataset("cifar10", root=tmp_path)


def test_numpy1_module_names_accepted(tmp_path):
    """Files pickled by numpy 1.x (like the official CIFAR files) name numpy.core.multiarray."""
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw = pickle.dumps({b"data": arr}, protocol=2)
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    p = tmp_path / "old.pkl"
    p.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))  # GLOBAL names are text
    assert np.array_equal(safe_unpickle(p)[b"data"], arr)
