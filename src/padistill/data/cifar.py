"""CIFAR-10 and CIFAR-100 loaders (official python pickles, or a compact `.npz`).

Input: `<root>/cifar-10-batches-py/` (`data_batch_1..5`, `test_batch`, `batches.meta`) or
`<root>/cifar-100-python/` (`train`, `test`, `meta`): pickled dicts with b'data' uint8 [n, 3072]
(channel-major RGB 32x32) and b'labels' / b'fine_labels'. If the folder is absent, `<root>/cifar10.npz` /
`<root>/cifar100.npz` in either layout of `formats.py` (e.g. shared/data/cifar10.npz).
Output: a `Dataset` whose train set is the batches concatenated in order (data_batch_1 .. 5), the order the
published PAD difficulty orderings index (spec §1.1, §1.4); CIFAR-100 uses the 100 fine labels.
Normalisation constants are the field's CIFAR ones, used for both datasets (spec §1.1).
Pickles are read with the restricted unpickler of `safe_pickle.py` (the files come from the internet).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from padistill.data.dataset import Dataset
from padistill.data.download import SOURCES, missing_data
from padistill.data.formats import dataset_from_npz
from padistill.data.registry import register_dataset
from padistill.data.safe_pickle import safe_unpickle
from padistill.errors import PadistillError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@register_dataset("cifar10")
def load_cifar10(root: Path, download: bool) -> Dataset:
    """CIFAR-10: 50,000 train / 10,000 test images, 3x32x32, 10 classes."""
    return _load("cifar10", Path(root), download, train=[f"data_batch_{i}" for i in range(1, 6)],
                 test="test_batch", meta="batches.meta", label_key="labels", names_key="label_names",
                 num_classes=10, default_names=CIFAR10_CLASSES)


@register_dataset("cifar100")
def load_cifar100(root: Path, download: bool) -> Dataset:
    """CIFAR-100: 50,000 train / 10,000 test images, 3x32x32, 100 fine-label classes."""
    return _load("cifar100", Path(root), download, train=["train"], test="test", meta="meta",
                 label_key="fine_labels", names_key="fine_label_names", num_classes=100, default_names=None)


def _load(name: str, root: Path, download: bool, *, train: list[str], test: str, meta: str, label_key: str,
          names_key: str, num_classes: int, default_names: list[str] | None) -> Dataset:
    folder = root / SOURCES[name].folder
    archive = root / f"{name}.npz"
    if not folder.is_dir():
        if archive.is_file():
            return _from_npz(name, archive, num_classes, default_names)
        folder = missing_data(name, root, download, also=f"(or a compact archive {archive.name})")
    missing = [f for f in [*train, test, meta] if not (folder / f).is_file()]
    if missing:
        raise PadistillError(f"{name}: {folder} is incomplete, missing {', '.join(missing)} (delete the "
                             "folder and extract the archive again, or delete it and use --download)")
    parts = [_read_batch(folder / f, label_key, num_classes) for f in train]
    x_train = torch.cat([p[0] for p in parts])
    y_train = torch.cat([p[1] for p in parts])
    x_test, y_test = _read_batch(folder / test, label_key, num_classes)
    names = _read_names(folder / meta, names_key, num_classes)
    return Dataset(name, x_train, y_train, x_test, y_test, names, CIFAR_MEAN, CIFAR_STD)


def _get(d: dict, key: str) -> object:
    # The official files hold bytes keys (Python 2 pickles read with encoding='bytes'); re-pickled copies
    # made with Python 3 may hold str keys.
    return d[key.encode()] if key.encode() in d else d.get(key)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise PadistillError(f"{path}: expected a pickled dict (a CIFAR batch), found {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PadistillError(f"{path}: field 'data' must be a uint8 array [n, 3072], found {found}")
    if labels is None:
        raise PadistillError(f"{path}: missing field {label_key!r}")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):
        y = np.asarray([], dtype=object)
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(data):
        raise PadistillError(f"{path}: field {label_key!r} must be {len(data)} integer labels, found "
                             f"{y.dtype} {list(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise PadistillError(f"{path}: labels must lie in [0, {num_classes}), found [{y.min()}, {y.max()}]")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values, each 32x32 row-major).
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(len(data), 3, 32, 32).copy())
    return x, torch.from_numpy(y.astype(np.int64))


def _read_names(path: Path, key: str, num_classes: int) -> list[str]:
    obj = safe_unpickle(path)
    names = _get(obj, key) if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != num_classes:
        raise PadistillError(f"{path}: field {key!r} must be a list of {num_classes} class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _from_npz(name: str, path: Path, num_classes: int, default_names: list[str] | None) -> Dataset:
    ds = dataset_from_npz(path, name, class_names=default_names or [str(i) for i in range(num_classes)],
                          mean=CIFAR_MEAN, std=CIFAR_STD)
    if tuple(ds.x_train.shape[1:]) != (3, 32, 32) or ds.num_classes != num_classes:
        raise PadistillError(f"{path}: expected {name} images [3, 32, 32] and {num_classes} classes, found "
                             f"{list(ds.x_train.shape[1:])} and {ds.num_classes} classes")
    return ds
