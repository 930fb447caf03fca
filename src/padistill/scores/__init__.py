"""Difficulty scores and per-class orderings (PAD's filtering information extraction, paper §3.2).

    run_scores(cfg, prepared, out)          the `padistill scores` stage (EL2N default; GraNd, loss,
                                            uncertainty, forgetting; or an imported PAD ordering file)
    load_ordering(path, dataset)            a published ordering file, validated (spec §1.4, §8.1)
    validate_ordering(ordering, labels)     the §8.1 checks on any table
    load_scores_ordering(scores_dir, prep)  the ordering of a finished scores folder, for the scheduler
    ordering_from_scores(scores, labels, C) per-class easiest-first table from per-sample scores
"""

from padistill.scores.ordering import (
    import_ordering,
    load_ordering,
    load_scores_ordering,
    ordering_from_scores,
    original_train_labels,
    validate_ordering,
)
from padistill.scores.scorers import METHODS, ForgettingTracker, sample_statistics
from padistill.scores.stage import run_scores, scores_settings

__all__ = [
    "METHODS", "ForgettingTracker", "import_ordering", "load_ordering", "load_scores_ordering",
    "ordering_from_scores", "original_train_labels", "run_scores", "sample_statistics", "scores_settings",
    "validate_ordering",
]
