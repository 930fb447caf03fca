"""Coreset baselines: real training subsets chosen by random, herding, k-center, forgetting, Glister or difficulty
scores, written as set folders that `padistill eval`, `export` and `report` read like distilled sets."""

from padistill.select.stage import run_select

__all__ = ["run_select"]
