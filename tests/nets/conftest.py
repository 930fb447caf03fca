"""Fixtures for the network tests: cached builds and the smallest input each net accepts.

Builds are cached per session (ResNet-18 / VGG-11 take ~0.1 s each on a small CPU); tests that need a
fresh model, or change its state, call `padistill.nets.build` themselves. The tests run torch on one
thread: their tensors are tiny, and on a shared 2-core machine two intra-op threads fighting other
processes made the folder ~7x slower.
"""

from __future__ import annotations

import functools

import pytest

from padistill.errors import PadistillError
from padistill.nets import build


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Small nets run faster (and steadier) on one thread."""


@functools.cache
def _cached(name: str, channels: int, size: int, num_classes: int):
    return build(name, num_classes, channels, (size, size), seed=0)


@functools.cache
def _smallest(name: str) -> int:
    # The cheapest input size a net accepts; gradient tests use it to stay fast on a 2-core CPU.
    for size in (8, 16, 28, 32):
        try:
            _cached(name, 3, size, 10)
            return size
        except PadistillError:
            continue
    raise AssertionError(f"{name} accepts none of 8, 16, 28, 32 px")


@pytest.fixture(scope="session")
def cached_net():
    """cached_net(name, channels=3, size=32, num_classes=10) -> a model built with seed 0 (shared)."""
    def get(name: str, channels: int = 3, size: int = 32, num_classes: int = 10):
        return _cached(name, channels, size, num_classes)
    return get


@pytest.fixture(scope="session")
def smallest_size():
    """smallest_size(name) -> the smallest square size in (8, 16, 28, 32) the net accepts (3 channels)."""
    return _smallest
