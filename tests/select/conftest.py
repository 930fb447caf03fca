"""Tiny digits data with a validation hold-out for the coreset stage tests (one torch thread)."""

from __future__ import annotations

import os

import pytest

from selkit import select_config


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Small nets run faster (and steadier) on one thread."""


@pytest.fixture(scope="session")
def sel_prepared(tmp_path_factory):
    os.environ.setdefault("PADISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
    from padistill.context import prepare

    return prepare(select_config(), log=lambda *_: None)


@pytest.fixture(scope="session")
def embed_dir(tmp_path_factory, sel_prepared):
    """One trained selection net shared by the tests (the stage reuses it)."""
    from padistill.select.embed import run_embed

    out = tmp_path_factory.mktemp("sel") / "embed"
    return run_embed(select_config(), sel_prepared, out, log=lambda *_: None, show_progress=False)
