"""Fixtures for the scores tests: a tiny BALANCED dataset (digits is unbalanced) in the generic npz format."""

from __future__ import annotations

import numpy as np
import pytest

C, PER_CLASS, TEST_PER_CLASS = 4, 12, 3


@pytest.fixture(scope="session")
def balanced_npz(tmp_path_factory):
    """4 classes x 12 train images (3x8x8), labels interleaved so dataset order != class order."""
    rng = np.random.default_rng(0)
    n = C * PER_CLASS
    y_train = np.array([(i * 7) % C for i in range(n)], dtype=np.int64)  # every class PER_CLASS times, mixed
    assert np.bincount(y_train).tolist() == [PER_CLASS] * C
    x_train = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    y_test = np.repeat(np.arange(C), TEST_PER_CLASS)
    x_test = rng.integers(0, 256, size=(len(y_test), 8, 8, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("npz") / "balanced.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="session")
def balanced_config(balanced_npz):
    """Factory: a tiny config on the balanced npz dataset, plus `--set`-style overrides."""
    import os

    from padistill.config import load_config

    os.environ.setdefault("PADISTILL_CACHE", str(balanced_npz.parent / "cache"))  # never the user's cache

    def make(*extra: str):
        return load_config(preset="pad", overrides=[
            "data.name=npz", f"data.options={{path: '{balanced_npz}'}}", "data.preprocess=normalize",
            "device=cpu", "net.name=convnet-2", "net.options={width: 8}", "scores.models=2", "scores.epochs=2",
            "scores.batch=16", "experts.epochs=4", "distill.max_start_epoch=2", "distill.current_max_start_epoch=1",
            "distill.expert_epochs=1", *extra])

    make.classes, make.per_class = C, PER_CLASS
    return make
