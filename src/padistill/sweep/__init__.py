"""`padistill sweep`: ablations as first-class runs (spec.py: the spec; run.py: shared stages, paired evaluations,
the results table; stats.py: the numbers; worker.py: one task per process for --jobs)."""

from padistill.sweep.run import run_sweep
from padistill.sweep.spec import list_sweep_presets, load_spec

__all__ = ["list_sweep_presets", "load_spec", "run_sweep"]
