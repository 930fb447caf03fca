"""Shared pytest fixtures.

`shared_dir`: the `shared/` folder with the real benchmark data (CIFAR-10, PAD orderings), found beside the
repository or at `$PADISTILL_SHARED`; tests that need it are marked `@pytest.mark.shared` and skip with a
reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread (small nets are faster so); restores the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    env = os.environ.get("PADISTILL_SHARED")
    # tests/conftest.py -> parents[1] is the repository; shared/ sits beside it.
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1].parent / "shared"
    if not (path / "data").is_dir():
        pytest.skip(f"real data not available: {path}/data not found "
                    "(set PADISTILL_SHARED to the shared/ folder)")
    return path


# ---------------------------------------------------------------------------------------------------
# Tiny end-to-end fixtures (digits, narrow ConvNet) shared by the matcher / distillation tests.


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    os.environ.setdefault("PADISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
    from helpers import tiny_config
    from padistill.context import prepare

    return prepare(tiny_config(), log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory, tiny_prepared):
    from helpers import tiny_config, write_expert_folder

    return write_expert_folder(tmp_path_factory.mktemp("experts"), tiny_prepared, tiny_config(), epochs=4, num=2)
