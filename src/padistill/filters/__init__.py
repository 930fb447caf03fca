"""PAD's alignment filters as small pure functions.

- `schedule`: FIEX for trajectory matching — which training samples an expert sees at each epoch
  (easy-first addition, one-shot easy removal), plus static hard/easy pruning for DC/DM.
- `params`: FIEM — which parameters (or layers) the matching distance uses.
- `window`: the start-epoch window of trajectory matching (DATM's sequential generation).
Every matcher accepts the result of these functions; passing none gives the unfiltered baseline.
"""

from padistill.filters.params import ParamCut, dm_feature_selection, kept_channels, param_cut, select_by_loss
from padistill.filters.schedule import kept_columns, prune_ordering, scheduled_indices
from padistill.filters.window import sample_start_epoch, start_epoch_bound

__all__ = [
    "ParamCut", "dm_feature_selection", "kept_channels", "param_cut", "select_by_loss",
    "kept_columns", "prune_ordering", "scheduled_indices",
    "sample_start_epoch", "start_epoch_bound",
]
