"""Builders that write tiny datasets in the REAL on-disk formats (CIFAR pickles, Tiny ImageNet folders,
image folders, npz archives) into tmp_path, exposed as fixtures."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 6, protocol: int = 2, seed: int = 0) -> dict:
    """Official layout: dicts with bytes keys, b'data' uint8 [n, 3072] channel-major, b'labels' list."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        # consecutive class ids across the batches, shuffled within each: every class has training images
        labels = [int(v) for v in rng.permutation((np.arange(per_batch) + b * per_batch) % 10)]
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{name}_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
        batches[name] = (data, labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def write_cifar100(root: Path, n_train: int = 120, n_test: int = 5, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.permutation(np.arange(n) % 100)]  # train: every class present
        d = {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
             b"coarse_labels": [f // 5 for f in fine], b"data": data}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        out[name] = (data, fine)
    meta = {b"fine_label_names": [f"class{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def save_image(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


TINY_WNIDS = ["n02", "n01", "n03"]  # deliberately unsorted in wnids.txt
TINY_TRAIN_NAMES = ["{w}_0.JPEG", "{w}_10.JPEG", "{w}_2.JPEG"]  # lexicographic: _0, _10, _2


def write_tiny(root: Path, val_layout: str = "official", seed: int = 2) -> Path:
    """tiny-imagenet-200/ with 3 classes x 3 train images, 2 val images per class; one grayscale JPEG."""
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (folder / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\n"
                                      "n03\tbullfrog, frog\nn99\tunused\n")

    def img(gray: bool = False) -> np.ndarray:
        shape = (64, 64) if gray else (64, 64, 3)
        return rng.integers(0, 256, size=shape, dtype=np.uint8)

    for w in TINY_WNIDS:
        for k, pattern in enumerate(TINY_TRAIN_NAMES):
            gray = w == "n03" and k == 1
            save_image(folder / "train" / w / "images" / pattern.format(w=w), img(gray), format="JPEG")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    ann = []
    for i, w in enumerate(["n03", "n01", "n02", "n01", "n03", "n02"]):
        name = f"val_{i}.JPEG"
        ann.append(f"{name}\t{w}\t0\t0\t63\t63")
        if val_layout == "official":
            save_image(folder / "val" / "images" / name, img(), format="JPEG")
        elif val_layout == "per_class":  # val/<wnid>/images/*
            save_image(folder / "val" / w / "images" / name, img(), format="JPEG")
        elif val_layout == "per_class_flat":  # val/<wnid>/*
            save_image(folder / "val" / w / name, img(), format="JPEG")
        elif val_layout == "images_per_class":  # val/images/<wnid>/*
            save_image(folder / "val" / "images" / w / name, img(), format="JPEG")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return folder


def webp_tiles(x_nhwc: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack images into lossless WebP tiles of grid x grid (row-major), padding the last tile with zeros."""
    n, h, w, c = x_nhwc.shape
    per = grid * grid
    pad = (-n) % per
    x = np.concatenate([x_nhwc, np.zeros((pad, h, w, c), np.uint8)])
    bufs, offsets = [], [0]
    for t in range(len(x) // per):
        tile = x[t * per:(t + 1) * per].reshape(grid, grid, h, w, c).transpose(0, 2, 1, 3, 4)
        tile = tile.reshape(grid * h, grid * w, c)
        b = io.BytesIO()
        Image.fromarray(tile.squeeze(-1) if c == 1 else tile).save(b, format="WEBP", lossless=True)
        bufs.append(np.frombuffer(b.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(bufs[-1]))
    return np.concatenate(bufs), np.array(offsets, np.int64)


@pytest.fixture
def builders():
    """Namespace of the writers above, so tests can call them without importing this conftest."""

    class B:
        cifar10 = staticmethod(write_cifar10)
        cifar100 = staticmethod(write_cifar100)
        tiny = staticmethod(write_tiny)
        image = staticmethod(save_image)
        tiles = staticmethod(webp_tiles)
        cifar10_names = CIFAR10_NAMES
        tiny_wnids = TINY_WNIDS

    return B
