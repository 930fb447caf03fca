"""The evaluation tests train tiny nets on 8x8 digits; torch runs on one thread here, because on a
shared 2-core machine two intra-op threads fighting other processes make tiny ops ~100x slower."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Small nets run faster (and steadier) on one thread."""


@pytest.fixture(scope="session")
def prepared():
    from evalkit import eval_prepared

    return eval_prepared()
