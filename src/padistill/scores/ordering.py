"""Per-class difficulty orderings: building them from scores, validating and importing them.

Input: per-sample scores (higher = harder) and training labels, or a published PAD ordering file.
Output: an int64 table `[C, K]`; row c holds training indices of class c, column 0 = EASIEST
(spec §1.4: the published files and the reference scheduler use this direction).

Spec references: format §1.4, invariant §8.1 (shape, int64, range, uniqueness, row c = class c),
the scheduler that consumes the table §1.5 (`padistill.filters.schedule`).

Unbalanced classes. The scheduler cuts the same column range from every row, so the rows must have equal
length. When classes have different sizes, every row is truncated to the smallest class size K and keeps
the K HARDEST samples of its class (the easiest surplus is dropped). Why the hardest:
- the easiest samples carry the least information: EL2N / forgetting pruning (Paul et al. 2021; Toneva et
  al. 2019) removes them first at almost no accuracy cost, and PAD itself removes the easiest 10-20% later;
- keeping the hard tail intact keeps the late, hard-sample trajectories (matched by large IPCs) complete.
The dropped samples are logged and recorded in the scores manifest; balanced datasets lose nothing.

Published files index the ORIGINAL train set (dataset order). With a validation hold-out the stages work on
the kept training set, so imported tables are validated against the original labels and then remapped with
`Prepared.remap_ordering`; tables in a scores folder already index the kept training set (Prepared order).
"""

from __future__ import annotations

from pathlib import Path

import torch

from padistill.errors import PadistillError
from padistill.utils.io import load_tensors, require_tensor


def ordering_from_scores(scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         tiebreak: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """Sort every class easiest-first by `scores` and equalise row lengths.

    Ties are broken by `tiebreak` (also higher = harder) if given, then by the lower index, so the table is
    deterministic. Returns (ordering int64 [C, K], dropped per class) where K = smallest class size and the
    dropped samples are each class's easiest surplus (see module docstring)."""
    scores = scores.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.int64)
    if tiebreak is not None:
        tiebreak = tiebreak.detach().to("cpu", torch.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise PadistillError(f"scores: expected scores and labels of the same shape [N], found "
                             f"{list(scores.shape)} and {list(labels.shape)}")
    if not torch.isfinite(scores).all():
        raise PadistillError("scores: non-finite per-sample scores (did a scoring model diverge? lower scores.lr)")
    counts = torch.bincount(labels, minlength=num_classes)
    if len(counts) != num_classes or int(counts.min()) == 0:
        raise PadistillError(f"scores: every class needs training samples; per-class counts {counts.tolist()}")
    k = int(counts.min())
    rows, dropped = [], []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()  # ascending index
        if tiebreak is not None:  # stable sorts: secondary key first, then the primary key
            idx = idx[torch.sort(tiebreak[idx], stable=True).indices]
        order = idx[torch.sort(scores[idx], stable=True).indices]
        rows.append(order[len(order) - k:])
        dropped.append(len(order) - k)
    return torch.stack(rows).contiguous(), dropped


def validate_ordering(ordering, labels: torch.Tensor, where: str = "ordering", complete: bool = True) -> torch.Tensor:
    """Check an ordering table against training labels (spec §8.1); returns it as int64 [C, K].

    complete=True (published files): every row c is exactly the set of indices whose label is c, so the
    table is a permutation of 0..N-1. complete=False (tables of a scores folder, whose rows may be
    truncated to the smallest class): every row holds distinct indices of its class, rows equally long.
    """
    labels = labels.detach().to("cpu", torch.int64)
    n = len(labels)
    if isinstance(ordering, torch.Tensor) and ordering.ndim == 1:
        raise PadistillError(
            f"{where}: a 1-D global ordering {list(ordering.shape)}, expected a per-class table [C, N_c] "
            "(PAD's CIFAR10_ConvNet.pt is such a file: global and hardest-first, the reference code cannot use "
            "it either); use a *_GraNd.pt / *_Uncertainty.pt file or `padistill scores`")
    t = require_tensor(ordering, where, dtype=torch.int64, ndim=2)
    num_classes = int(labels.max()) + 1 if n else 0
    counts = torch.bincount(labels, minlength=num_classes)
    if t.shape[0] != num_classes:
        raise PadistillError(f"{where}: {t.shape[0]} rows, the dataset has {num_classes} classes (one row per class)")
    if t.shape[1] == 0:
        raise PadistillError(f"{where}: rows are empty (shape {list(t.shape)})")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n:
        raise PadistillError(f"{where}: indices must lie in [0, {n}) (the training set), found [{lo}, {hi}]")
    flat = t.reshape(-1)
    if len(torch.unique(flat)) != len(flat):
        raise PadistillError(f"{where}: indices repeat ({len(flat) - len(torch.unique(flat))} duplicates); "
                             "each training sample may appear once")
    row_labels = labels[t]
    wrong = row_labels != torch.arange(num_classes).unsqueeze(1)
    if wrong.any():
        c, j = (int(v) for v in torch.nonzero(wrong)[0])
        raise PadistillError(
            f"{where}: row {c} holds index {int(t[c, j])} (column {j}) whose label is {int(row_labels[c, j])}; "
            f"row c must hold the indices of class c ({int(wrong.sum())} misplaced; wrong dataset or class order?)")
    if complete:
        short = torch.nonzero(counts != t.shape[1]).flatten()
        if len(short):
            c = int(short[0])
            raise PadistillError(f"{where}: row {c} has {t.shape[1]} indices, class {c} has {int(counts[c])} "
                                 "training samples (each row must be a permutation of its class)")
    return t


def original_train_labels(prepared) -> torch.Tensor:
    """Labels of the ORIGINAL training set (before the validation hold-out), in dataset order.

    Published orderings index that set. Without a hold-out these are the prepared labels; with one the
    dataset is loaded again (the hold-out cannot be undone from the kept part alone)."""
    if prepared.x_val is None:
        return prepared.dataset.y_train.cpu()
    from padistill.data import load_dataset

    d = prepared.config.data
    full = load_dataset(d.name, root=d.root, download=d.download, **d.options)
    labels = full.y_train.cpu()
    if not torch.equal(labels[prepared.train_index], prepared.dataset.y_train.cpu()):
        raise PadistillError(f"dataset {d.name!r}: reloaded labels disagree with the prepared training set")
    return labels


def load_ordering(path: str | Path, dataset) -> torch.Tensor:
    """Load and validate a published PAD ordering file (int64 [C, N_c], column 0 = easiest; spec §1.4).

    `dataset`: a `padistill.data.Dataset` (its original, un-held-out training labels) or a label tensor.
    Returns the table over ORIGINAL train indices; map it with `Prepared.remap_ordering` when a
    validation split is held out (or use `import_ordering`)."""
    labels = dataset if isinstance(dataset, torch.Tensor) else dataset.y_train
    obj = load_tensors(path, "difficulty ordering")
    return validate_ordering(obj, labels, where=str(path), complete=True)


def import_ordering(path: str | Path, prepared) -> torch.Tensor:
    """A published ordering validated against the original labels and mapped to the prepared training set."""
    table = load_ordering(path, original_train_labels(prepared))
    mapped = prepared.remap_ordering(table)
    return validate_ordering(mapped, prepared.y_train, where=f"{path} (after the validation hold-out)",
                             complete=True)


def load_scores_ordering(scores_dir: str | Path, prepared) -> torch.Tensor:
    """The ordering of a finished scores folder, checked against the prepared training set.

    Refuses a folder computed on other data (another dataset, hold-out or preprocessing)."""
    from padistill.utils.manifest import MANIFEST, require_complete

    folder = Path(scores_dir)
    m = require_complete(folder, "scores", verify=("ordering.pt",))
    data_fp = (m.get("inputs") or {}).get("data")
    if data_fp is None:
        raise PadistillError(f"{folder}: its {MANIFEST} records no data fingerprint ('inputs.data'), so the "
                             "scores cannot be matched to this run's data; re-run `padistill scores`")
    if data_fp != prepared.fingerprint():
        raise PadistillError(
            f"{folder}: scores were computed on other training data (fingerprint {data_fp}, this run has "
            f"{prepared.fingerprint()}: different dataset, validation hold-out or preprocessing); "
            "re-run `padistill scores`")
    path = folder / "ordering.pt"
    return validate_ordering(load_tensors(path, "difficulty ordering"), prepared.y_train, where=str(path),
                             complete=False)
