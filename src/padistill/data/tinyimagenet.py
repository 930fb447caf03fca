"""Tiny ImageNet loader (official folder layout, decoded once and cached).

Input: `<root>/tiny-imagenet-200/` as unpacked from tiny-imagenet-200.zip: `wnids.txt`, `words.txt`
(optional), `train/<wnid>/images/*.JPEG`, and the validation set either in the official layout
(`val/images/*.JPEG` + `val/val_annotations.txt`, tab-separated: file, wnid, bbox) or already re-organised
into one folder per class (`val/<wnid>/images/*`, `val/<wnid>/*` or `val/images/<wnid>/*`).
Output: a `Dataset` of 3x64x64 RGB images (grayscale JPEGs converted), 200 classes in sorted-wnid order
(= torchvision ImageFolder order on train/, which the published TinyImageNet ordering indexes, spec §1.4);
train images class by class, sorted file names within a class; the test set (= official val) likewise.
ImageNet mean/std (spec §1.1). Class names are the first synonym in words.txt (the wnid if absent).
Purpose: the reference code needs a manually re-organised val folder; this reads both layouts directly.
Decoding 110k JPEGs is slow, so the arrays are cached in `<root>/tinyimagenet-cache.npz` (written
atomically) keyed by a signature of the file list, sizes and labels, and reused while it matches.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from padistill.data.dataset import Dataset
from padistill.data.download import missing_data
from padistill.data.folders import decode_images, list_images, probe_image
from padistill.data.registry import register_dataset
from padistill.errors import PadistillError
from padistill.utils.io import atomic_write_with

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_NAME = "tinyimagenet-cache.npz"
_CACHE_VERSION = "padistill.tinyimagenet-cache/1"


@register_dataset("tinyimagenet")
def load_tinyimagenet(root: Path, download: bool, cache: bool = True) -> Dataset:
    """Tiny ImageNet: 100,000 train / 10,000 test (official val) images, 3x64x64, 200 classes."""
    root = Path(root)
    folder = root / "tiny-imagenet-200"
    if not folder.is_dir():
        folder = missing_data("tinyimagenet", root, download)
    wnids = _read_wnids(folder / "wnids.txt")
    index = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = [], []
    for w in wnids:
        found = list_images(folder / "train" / w)
        if not found:
            raise PadistillError(f"tinyimagenet: {folder / 'train' / w} is missing or has no images "
                                 "(incomplete extraction? delete the folder and extract again)")
        train_files += found
        train_labels += [index[w]] * len(found)
    test_files, test_labels = _val_files(folder / "val", index)
    names = _class_names(folder / "words.txt", wnids)
    signature = _signature(folder, train_files + test_files, train_labels + test_labels)
    cache_path = root / CACHE_NAME
    arrays = _read_cache(cache_path, signature) if cache else None
    if arrays is None:
        size, _ = probe_image(train_files[0])
        x_train = decode_images(train_files, "RGB", size, progress="tinyimagenet train")
        x_test = decode_images(test_files, "RGB", size, progress="tinyimagenet val")
        arrays = (x_train, torch.tensor(train_labels, dtype=torch.int64), x_test,
                  torch.tensor(test_labels, dtype=torch.int64))
        if cache:
            _write_cache(cache_path, signature, arrays)
    return Dataset("tinyimagenet", *arrays, names, IMAGENET_MEAN, IMAGENET_STD)


def _read_wnids(path: Path) -> list[str]:
    if not path.is_file():
        raise PadistillError(f"tinyimagenet: {path} not found (incomplete extraction of "
                             "tiny-imagenet-200.zip?)")
    wnids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise PadistillError(f"{path}: expected one distinct class id (wnid) per line")
    return sorted(wnids)  # ImageFolder order = sorted folder names = sorted wnids


def _val_files(val: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Validation images grouped by class (sorted-wnid order), sorted file names within a class."""
    ann = val / "val_annotations.txt"
    flat = val / "images"
    if ann.is_file() and flat.is_dir() and any(p.is_file() for p in flat.iterdir()):
        pairs = []
        for n, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1].strip() not in index:
                raise PadistillError(f"{ann}: line {n}: expected 'file<TAB>wnid<TAB>...' with a wnid from "
                                     f"wnids.txt, found {line[:80]!r}")
            path = flat / parts[0].strip()
            if not path.is_file():
                raise PadistillError(f"{ann}: line {n}: image {path} not found")
            pairs.append((index[parts[1].strip()], path.name, path))
        pairs.sort()
        return [p for _, _, p in pairs], [c for c, _, _ in pairs]
    # Re-organised layouts: one folder per class, under val/ or val/images/.
    base = flat if flat.is_dir() and any(d.name in index for d in flat.iterdir() if d.is_dir()) else val
    if not base.is_dir():
        raise PadistillError(f"tinyimagenet: {val} not found (expected val/images + val/val_annotations.txt)")
    dirs = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d for d in dirs if d not in index]
    if not dirs or unknown:
        found = f"unknown folders {', '.join(unknown[:3])}" if unknown else "neither"
        raise PadistillError(f"tinyimagenet: {base} must hold val/images + val_annotations.txt or one folder "
                             f"per wnid; found {found}")
    files, labels = [], []
    for d in dirs:
        found = list_images(base / d)
        files += found
        labels += [index[d]] * len(found)
    if not files:
        raise PadistillError(f"tinyimagenet: no validation images under {base}")
    return files, labels


def _class_names(words: Path, wnids: list[str]) -> list[str]:
    if not words.is_file():
        return list(wnids)
    table = {}
    for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        table[wnid.strip()] = text.split(",")[0].strip()
    return [table.get(w) or w for w in wnids]


def _signature(folder: Path, files: list[Path], labels: list[int]) -> str:
    """Cheap identity of the image set: relative paths, file sizes and labels (no pixel reads)."""
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for path, label in zip(files, labels):
        h.update(f"{path.relative_to(folder).as_posix()}\t{path.stat().st_size}\t{label}\n".encode())
    return h.hexdigest()


def _read_cache(path: Path, signature: str) -> tuple[torch.Tensor, ...] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["signature"]) != signature:
                return None  # the files changed: rebuild
            arrays = tuple(torch.from_numpy(z[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"{path}: unreadable cache ignored, decoding the images again ({e})", stacklevel=3)
        return None
    return arrays


def _write_cache(path: Path, signature: str, arrays: tuple[torch.Tensor, ...]) -> None:
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, signature=np.array(signature), x_train=arrays[0].numpy(), y_train=arrays[1].numpy(),
                     x_test=arrays[2].numpy(), y_test=arrays[3].numpy())

    try:
        atomic_write_with(path, writer)
    except OSError as e:  # a read-only data root only costs speed next time
        warnings.warn(f"{path}: cannot write the decoded-image cache ({e.strerror or e})", stacklevel=3)
