"""scikit-learn's bundled 8x8 handwritten digits: the embedded default dataset of the quickstart.

Input: nothing on disk (`sklearn.datasets.load_digits` ships the data; no download); option
`test_per_class` (default 30).
Output: a `Dataset` of 1x8x8 uint8 images (values 0..16 scaled by round(v * 255 / 16)), 10 classes
'0'..'9'; for each class the last `test_per_class` samples in dataset order form the test set, the rest
the train set (a deterministic stratified split: 1497 train / 300 test with the default).
Purpose: a real, tiny dataset so the whole pipeline can run in seconds on a CPU and in tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from padistill.data.dataset import Dataset, channel_stats
from padistill.data.registry import register_dataset
from padistill.errors import PadistillError


@register_dataset("digits")
def load_digits(root: Path, download: bool, test_per_class: int = 30) -> Dataset:
    """1797 8x8 digits; `root` and `download` are unused (the data ships with scikit-learn)."""
    from sklearn.datasets import load_digits as sk_load_digits  # imported lazily: sklearn is slow to import

    bunch = sk_load_digits()
    x = np.rint(bunch.data.astype(np.float64) * 255.0 / 16.0).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    counts = np.bincount(y, minlength=10)
    test_per_class = int(test_per_class)
    if not 0 <= test_per_class < int(counts.min()):
        raise PadistillError(f"digits: test_per_class must be in [0, {int(counts.min())}), "
                             f"found {test_per_class}")
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if test_per_class:
            is_test[idx[-test_per_class:]] = True
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    mask = torch.from_numpy(is_test)
    x_train = x_t[~mask].contiguous()
    mean, std = channel_stats(x_train)
    return Dataset("digits", x_train, y_t[~mask], x_t[mask].contiguous(), y_t[mask],
                   [str(i) for i in range(10)], mean, std)
