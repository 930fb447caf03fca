"""The in-memory image classification dataset every stage works on.

Input: uint8 image tensors and int64 labels produced by a loader (see `registry.py`).
Output: a `Dataset` object with per-class index lists, a content fingerprint, subsets and a seeded
hold-out validation split.
Purpose: keep images in their original uint8 form and *dataset order* (the published PAD difficulty
orderings index that order, spec §1.1/§1.4); preprocessing (ZCA / normalisation) happens later in
`transforms.py`, so the same object serves every preprocessing choice.

A `Dataset` is treated as immutable: its fingerprint is computed once and cached, so do not modify its
tensors in place (derive a new one with `subset_train`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from padistill.errors import PadistillError
from padistill.utils.io import sha256_tensor
from padistill.utils.rng import generator


@dataclass(eq=False)  # eq=False: comparing tensors field-wise is ambiguous; use fingerprint() instead
class Dataset:
    """Train/test images (uint8 [N, C, H, W], dataset order), int64 labels, class names, normalisation."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]  # per-channel mean of images in [0, 1] (used by 'normalize' preprocessing)
    std: tuple[float, ...]
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    # ----------------------------------------------------------------------------------- shape facts
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def __repr__(self) -> str:
        c, (h, w) = self.channels, self.image_size
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"classes={self.num_classes}, image={c}x{h}x{w})")

    # ------------------------------------------------------------------------------- per-class views
    def per_class_counts(self) -> torch.Tensor:
        """int64 [num_classes]: number of training images of each class."""
        return torch.bincount(self.y_train, minlength=self.num_classes)

    def class_indices(self) -> list[torch.Tensor]:
        """Global train indices of each class, ascending (a stable sort keeps dataset order)."""
        order = torch.argsort(self.y_train, stable=True)
        return list(torch.split(order, self.per_class_counts().tolist()))

    # ----------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """sha256 hex over name, class names and the exact train/test tensors (cached)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"padistill.dataset/1;{self.name};".encode())
            h.update("\x1f".join(self.class_names).encode("utf-8"))
            h.update(sha256_tensor(self.x_train, self.y_train, self.x_test, self.y_test).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ----------------------------------------------------------------------------------- validation
    def validate(self) -> Dataset:
        """Check dtypes, shapes, label range and consistency; raise `PadistillError` naming the problem."""
        where = f"dataset {self.name!r}"
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
                raise PadistillError(f"{where}: x_{split} must be a uint8 tensor [N, C, H, W], found "
                                     f"{_describe(x)}")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
                raise PadistillError(f"{where}: y_{split} must be an int64 tensor [N], found {_describe(y)}")
            if len(x) != len(y):
                raise PadistillError(f"{where}: x_{split} has {len(x)} images but y_{split} has "
                                     f"{len(y)} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise PadistillError(f"{where}: y_{split} values must lie in [0, {self.num_classes}), found "
                                     f"[{int(y.min())}, {int(y.max())}]")
        if len(self.y_train) == 0:
            raise PadistillError(f"{where}: the training set is empty")
        missing = sorted(set(range(self.num_classes)) - set(self.y_train.unique().tolist()))
        if missing:
            names = ", ".join(repr(self.class_names[c]) if c < len(self.class_names) else str(c) for c in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise PadistillError(f"{where}: class(es) {names}{more} have no training images (every class needs "
                                 f"some to distil from)")
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise PadistillError(f"{where}: test images have shape {list(self.x_test.shape[1:])}, train "
                                 f"images {list(self.x_train.shape[1:])}")
        if self.num_classes == 0 or not all(isinstance(n, str) for n in self.class_names):
            raise PadistillError(f"{where}: class_names must be a non-empty list of strings")
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != self.channels:
                raise PadistillError(f"{where}: {what} has {len(vals)} values, expected one per channel "
                                     f"({self.channels})")
        if any(s <= 0 for s in self.std):
            raise PadistillError(f"{where}: std values must be positive, found {tuple(self.std)}")
        return self

    # ---------------------------------------------------------------------------------- derived sets
    def subset_train(self, indices: torch.Tensor | list[int]) -> Dataset:
        """A dataset whose train set is `x_train[indices]` in the order given (test set unchanged)."""
        idx = _as_index(indices, len(self.y_train), f"dataset {self.name!r}: subset_train indices")
        return Dataset(self.name, self.x_train[idx], self.y_train[idx], self.x_test, self.y_test,
                       list(self.class_names), tuple(self.mean), tuple(self.std))

    def hold_out_validation(self, per_class: int, seed: int
                            ) -> tuple[Dataset, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move `per_class` random train images of each class into a validation set.

        Returns (dataset without them, x_val uint8, y_val int64, kept) where `kept[i]` is the original
        train index of the new train image i (remaining images keep dataset order). The validation set is
        class-major, ascending original index within a class. The draw depends only on `seed` (its own
        generator, never the global RNG), so two runs with the same seed hold out the same images.
        """
        per_class = int(per_class)
        counts = self.per_class_counts()
        smallest = int(counts.min())
        if per_class < 0 or per_class >= smallest:
            raise PadistillError(f"dataset {self.name!r}: hold-out per_class must be in [0, {smallest}) "
                                 f"(smallest class has {smallest} train images), found {per_class}")
        g = generator(seed, "data.hold_out_validation")
        chosen = []
        for idx in self.class_indices():
            pick = torch.randperm(len(idx), generator=g)[:per_class]
            chosen.append(idx[torch.sort(pick).values])
        val_idx = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.int64)
        keep_mask = torch.ones(len(self.y_train), dtype=torch.bool)
        keep_mask[val_idx] = False
        kept = torch.nonzero(keep_mask).flatten()
        return self.subset_train(kept), self.x_train[val_idx], self.y_train[val_idx], kept


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W] scaled to [0, 1].

    Computed exactly from a 256-bin histogram per channel, so it needs no float copy of the data.
    """
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64) / 255.0
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        m = float((counts * values).sum() / total)
        var = float((counts * values.square()).sum() / total) - m * m
        means.append(round(m, 6))
        # A constant channel would give std 0 and a division by zero later; fall back to 1.
        stds.append(round(var ** 0.5, 6) if var > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"{str(obj.dtype).replace('torch.', '')} {list(obj.shape)}"
    return type(obj).__name__


def _as_index(indices: torch.Tensor | list[int], n: int, where: str) -> torch.Tensor:
    idx = torch.as_tensor(indices) if len(indices) else torch.empty(0, dtype=torch.int64)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim != 1:
        raise PadistillError(f"{where}: expected a 1-D integer index list, found {_describe(idx)}")
    idx = idx.to(torch.int64)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise PadistillError(f"{where}: values must lie in [0, {n}), found "
                             f"[{int(idx.min())}, {int(idx.max())}]")
    return idx
