"""The tiny coreset config (digits, narrow ConvNet, a 5-per-class validation hold-out) for tests/select."""

from __future__ import annotations

SELECT_OVERRIDES = ["data.val_per_class=5", "select.epochs=2", "select.batch=64", "scores.models=1",
                    "scores.epochs=1", "eval.baseline=false"]


def select_config(*extra: str):
    from helpers import tiny_config

    return tiny_config(*SELECT_OVERRIDES, *extra)
