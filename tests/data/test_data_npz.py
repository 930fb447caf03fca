"""The npz loader: plain arrays (NHWC / NCHW / NHW, uint8 / float), tiled lossless WebP, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padistill.data import load_dataset
from padistill.errors import PadistillError


def _arrays(n=12, shape=(5, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), (np.arange(n) % 3).astype(np.int16)


def test_nhwc_uint8_with_names(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4],
             class_names=np.array(["a", "b", "c"]))
    ds = load_dataset("npz", root=tmp_path)
    assert ds.x_train.shape == (12, 3, 5, 6) and ds.x_train.dtype == torch.uint8
    assert torch.equal(ds.x_train, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == y.tolist()
    assert ds.class_names == ["a", "b", "c"]
    xf = x.astype(np.float64) / 255
    assert ds.mean == pytest.approx(tuple(xf.mean(axis=(0, 1, 2))), abs=1e-5)
    assert ds.std == pytest.approx(tuple(xf.std(axis=(0, 1, 2))), abs=1e-5)


def test_nchw_float_and_grayscale_path_option(tmp_path):
    rng = np.random.default_rng(1)
    xf = rng.random((6, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x_train=xf, y_train=np.array([0, 1, 0, 1, 0, 1]), x_test=xf[:2],
             y_test=np.array([1, 0], dtype=np.uint64))
    ds = load_dataset("npz", root=tmp_path / "unused", path=str(tmp_path / "f.npz"))
    assert ds.x_train.shape == (6, 1, 4, 4)
    assert torch.equal(ds.x_train, torch.from_numpy(np.rint(xf.astype(np.float64) * 255).astype(np.uint8)))
    assert ds.class_names == ["0", "1"]
    gray = (xf[:, 0] * 255).astype(np.uint8)  # [N, H, W]
    np.savez(tmp_path / "g.npz", x_train=gray, y_train=np.zeros(6, int), x_test=gray, y_test=np.zeros(6, int))
    assert load_dataset("npz", path=str(tmp_path / "g.npz")).x_train.shape == (6, 1, 4, 4)


@pytest.mark.parametrize("grid,n_train", [(10, 150), (3, 18)])
def test_webp_tile_layout(tmp_path, builders, grid, n_train):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (n_train, 4, 4, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    tb, to = builders.tiles(x, grid)
    sb, so = builders.tiles(xt, grid)
    extra = {} if grid == 10 else {"tile_grid": np.array(grid)}
    np.savez(tmp_path / "data.npz", train_webp=tb, train_offsets=to, test_webp=sb, test_offsets=so,
             y_train=(np.arange(n_train) % 5).astype(np.uint8), y_test=np.arange(7).astype(np.uint8) % 5,
             class_names=np.array(list("vwxyz")), **extra)
    ds = load_dataset("npz", root=tmp_path)
    assert torch.equal(ds.x_train, torch.from_numpy(x).permute(0, 3, 1, 2))  # lossless and row-major order
    assert torch.equal(ds.x_test, torch.from_numpy(xt).permute(0, 3, 1, 2))
    assert ds.class_names == list("vwxyz")


def test_bad_shapes_and_dtypes(tmp_path):
    x, y = _arrays()
    bad = {
        "x5": (dict(x_train=np.zeros((4, 5, 5, 5), np.uint8), y_train=np.zeros(4, int)),
               r"x_train: expected images \[N, H, W, C\] or \[N, C, H, W\] with C = 1 or 3"),
        "count": (dict(x_train=x, y_train=y[:5]), "train: 12 images but 5 labels"),
        "float_range": (dict(x_train=x.astype(np.float32), y_train=y), r"float images must lie in \[0, 1\]"),
        "label_dtype": (dict(x_train=x, y_train=y.astype(np.float32)), "expected a 1-D integer label array"),
        "negative": (dict(x_train=x, y_train=y - 1), "labels must be >= 0"),
        "missing": (dict(x_train=x), "missing array 'y_train'"),
    }
    for key, (arrays, pattern) in bad.items():
        path = tmp_path / f"{key}.npz"
        full = dict(x_train=x, y_train=y, x_test=x, y_test=y)
        full.update(arrays)
        if key == "missing":
            full.pop("y_train")
        np.savez(path, **full)
        with pytest.raises(PadistillError, match=pattern):
            load_dataset("npz", path=str(path))


def test_object_arrays_and_garbage_refused(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "obj.npz", x_train=x, y_train=y, x_test=x, y_test=y,
             class_names=np.array(["a", 1, None], dtype=object))
    with pytest.raises(PadistillError, match="obj.npz: cannot read npz archive"):
        load_dataset("npz", path=str(tmp_path / "obj.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PadistillError, match="junk.npz: not an .npz archive"):
        load_dataset("npz", path=str(tmp_path / "junk.npz"))
    np.save(tmp_path / "plain.npy", x)  # a .npy (or a pickle) under an .npz name: no talk of allow_pickle
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with pytest.raises(PadistillError, match="plain.npz: not an .npz archive") as e:
        load_dataset("npz", path=str(tmp_path / "plain.npz"))
    assert "allow_pickle" not in str(e.value)
    with pytest.raises(PadistillError, match="data.npz not found"):
        load_dataset("npz", root=tmp_path)


def test_corrupt_webp_tile(tmp_path, builders):
    x = np.zeros((100, 4, 4, 3), np.uint8)
    tb, to = builders.tiles(x, 10)
    tb = tb.copy()
    tb[: len(tb) // 2] = 7
    np.savez(tmp_path / "data.npz", train_webp=tb, train_offsets=to, test_webp=tb, test_offsets=to,
             y_train=np.zeros(100, np.uint8), y_test=np.zeros(100, np.uint8))
    with pytest.raises(PadistillError, match="train_webp: tile 0 is not a readable image"):
        load_dataset("npz", root=tmp_path)
