"""Distillation: the outer loop (init, optimisers, checkpoints, validation) around a matcher."""

from padistill.distill.loop import run_distill

__all__ = ["run_distill"]
