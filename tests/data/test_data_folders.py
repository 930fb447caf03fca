"""imagefolder and Tiny ImageNet loaders on folders of real PNG/JPEG files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import padistill.data.tinyimagenet as tiny_mod
from padistill.data import load_dataset
from padistill.errors import PadistillError


def _decode(path, mode="RGB") -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert(mode))
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


# ------------------------------------------------------------------------------------------ imagefolder
def _folder(tmp_path, builders, gray=False, n=5, size=(6, 4)):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    for cls in ("dog", "cat"):
        for i in range(n):
            ext = [".png", ".PNG", ".bmp", ".webp", ".png"][i % 5]
            ext = ".jpeg" if gray and ext == ".webp" else ext  # WebP has no grayscale mode: it reopens as RGB
            kw = {"lossless": True} if ext == ".webp" else {}
            builders.image(root / cls / f"{i:02d}{ext}", rng.integers(0, 256, shape, dtype=np.uint8), **kw)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_test_root_order_and_classes(tmp_path, builders):
    root = _folder(tmp_path, builders)
    test_root = tmp_path / "test"
    builders.image(test_root / "dog" / "a.png", np.zeros((4, 6, 3), np.uint8))
    ds = load_dataset("imagefolder", root=root, test_root=str(test_root))
    assert ds.class_names == ["cat", "dog"]  # sorted folder names
    assert ds.x_train.shape == (10, 3, 4, 6) and ds.y_train.tolist() == [0] * 5 + [1] * 5
    files = sorted((root / "cat").glob("*.*"))
    files = [f for f in files if f.suffix != ".txt"]
    assert torch.equal(ds.x_train[1], _decode(files[1]))  # lossless formats: exact pixels, sorted names
    assert ds.y_test.tolist() == [1] and ds.x_test.shape == (1, 3, 4, 6)


def test_imagefolder_seeded_split(tmp_path, builders):
    root = _folder(tmp_path, builders, n=10)
    a = load_dataset("imagefolder", root=root, test_fraction=0.3, split_seed=5)
    b = load_dataset("imagefolder", root=root, test_fraction=0.3, split_seed=5)
    c = load_dataset("imagefolder", root=root, test_fraction=0.3, split_seed=6)
    assert a.per_class_counts().tolist() == [7, 7] and torch.bincount(a.y_test).tolist() == [3, 3]
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_test, c.x_test)
    every = load_dataset("imagefolder", root=root, test_fraction=0.0)
    # train + test together are exactly the images, none duplicated
    pooled = {bytes(t.numpy().tobytes()) for t in torch.cat([a.x_train, a.x_test])}
    assert pooled == {bytes(t.numpy().tobytes()) for t in every.x_train}


def test_imagefolder_grayscale_stays_one_channel(tmp_path, builders):
    root = _folder(tmp_path, builders, gray=True)
    ds = load_dataset("imagefolder", root=root, test_fraction=0.2)
    assert ds.channels == 1 and len(ds.mean) == 1
    builders.image(root / "dog" / "zz.png", np.zeros((4, 6, 3), np.uint8))  # one RGB image -> all RGB
    assert load_dataset("imagefolder", root=root).channels == 3


def test_imagefolder_bad_inputs(tmp_path, builders):
    root = _folder(tmp_path, builders)
    builders.image(root / "dog" / "zz_big.png", np.zeros((5, 6, 3), np.uint8))
    with pytest.raises(PadistillError, match=r"zz_big.png: image is 6x5 px, expected 6x4"):
        load_dataset("imagefolder", root=root)
    (root / "dog" / "zz_big.png").unlink()
    (root / "bird").mkdir()
    with pytest.raises(PadistillError, match="bird contains no images"):
        load_dataset("imagefolder", root=root)
    (root / "bird").rmdir()
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(PadistillError, match="broken.jpg: not a readable image"):
        load_dataset("imagefolder", root=root)
    with pytest.raises(PadistillError, match="imagefolder: folder .* not found"):
        load_dataset("imagefolder", root=tmp_path / "nope")
    with pytest.raises(PadistillError, match=r"test_fraction must be in \[0, 1\)"):
        load_dataset("imagefolder", root=tmp_path / "imgs", test_fraction=1.0)


def test_imagefolder_symlink_loop_is_refused(tmp_path, builders):
    root = _folder(tmp_path, builders)
    os.symlink(root / "cat", root / "cat" / "again")  # a link back to its own folder: os.walk would repeat it
    with pytest.raises(PadistillError, match=r"cat/again: leads to .*cat, which was already read"):
        load_dataset("imagefolder", root=root)


def test_imagefolder_refuses_16bit(tmp_path, builders):
    root = tmp_path / "deep"
    for c in ("a", "b"):
        Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(_mk(root / c) / "x.png")
    with pytest.raises(PadistillError, match="16-bit or float"):
        load_dataset("imagefolder", root=root)


def _mk(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


# ------------------------------------------------------------------------------------------ Tiny ImageNet
@pytest.mark.parametrize("layout", ["official", "per_class", "per_class_flat", "images_per_class"])
def test_tinyimagenet_layouts(tmp_path, builders, layout):
    folder = builders.tiny(tmp_path, val_layout=layout)
    ds = load_dataset("tiny", root=tmp_path, cache=False)
    assert ds.name == "tinyimagenet"
    assert ds.class_names == ["goldfish", "salamander", "bullfrog"]  # sorted wnids n01, n02, n03
    assert ds.x_train.shape == (9, 3, 64, 64) and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # within a class: sorted file names (_0, _10, _2); the grayscale JPEG became 3 identical channels
    expect = [folder / "train" / "n03" / "images" / n for n in ("n03_0.JPEG", "n03_10.JPEG", "n03_2.JPEG")]
    for k, path in enumerate(expect):
        assert torch.equal(ds.x_train[6 + k], _decode(path))
    assert torch.equal(ds.x_train[7, 0], ds.x_train[7, 2])
    # val annotations: n03, n01, n02, n01, n03, n02 -> grouped by class, sorted names within a class
    assert ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.mean == (0.485, 0.456, 0.406)


def test_tinyimagenet_cache_reused_and_invalidated(tmp_path, builders, monkeypatch):
    folder = builders.tiny(tmp_path)
    first = load_dataset("tinyimagenet", root=tmp_path)
    assert (tmp_path / "tinyimagenet-cache.npz").is_file()

    def boom(*a, **k):
        raise AssertionError("decoded again although the cache matches")

    monkeypatch.setattr(tiny_mod, "decode_images", boom)
    again = load_dataset("tinyimagenet", root=tmp_path)
    assert again.fingerprint() == first.fingerprint()
    monkeypatch.undo()
    # a new training image changes the signature -> decoded again, with 10 train images
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "train" / "n01" / "images" / "n01_9.JPEG")
    assert len(load_dataset("tinyimagenet", root=tmp_path).y_train) == 10


def test_tinyimagenet_bad_inputs(tmp_path, builders):
    with pytest.raises(PadistillError, match="tiny-imagenet-200/ in .*--download"):
        load_dataset("tinyimagenet", root=tmp_path)
    folder = builders.tiny(tmp_path)
    ann = folder / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace("\tn02\t", "\tn77\t", 1))
    with pytest.raises(PadistillError, match="val_annotations.txt: line 3: expected"):
        load_dataset("tinyimagenet", root=tmp_path, cache=False)
    (folder / "wnids.txt").unlink()
    with pytest.raises(PadistillError, match="wnids.txt not found"):
        load_dataset("tinyimagenet", root=tmp_path, cache=False)
