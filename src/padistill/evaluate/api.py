"""Evaluation conveniences over `Prepared` data and a `Config` (spec §4; paper Tables 1-3a).

- `evaluate_set`: one set, one net, on the held-out validation split (model selection during
  distillation; refused when there is none — the test set is never used to choose anything) or on the
  test split (the final number).
- `cross_arch`: several sets (rows) x several registered nets (columns) under the identical protocol,
  one `EvalTable` (paper Table 2 / 3a shape). Rows share the initialisation and data-order seeds of
  each (net, run), so differences between rows are paired.
- `train_on_real`: the configured net trained on all (or a random per-class subset of) the real
  training images with the same protocol: `padistill train`, and the "full dataset" reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from padistill.errors import PadistillError
from padistill.evaluate.protocol import EvalResult, Protocol, evaluate
from padistill.evaluate.sets import BASELINE_LR, EvalSet, check_space, random_subset
from padistill.evaluate.table import EvalTable


def net_options(cfg, name: str) -> dict:
    """Builder options of eval net `name`: the config's net options when it is the config's net."""
    return dict(cfg.net.options) if name.strip().lower() == cfg.net.name.strip().lower() else {}


def split_tensors(prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "val":
        if prepared.x_val is None:
            raise PadistillError("eval: split='val' needs a validation split held out from the training data "
                                 "(set data.val_per_class > 0); the test set is never used for model selection")
        return prepared.x_val, prepared.y_val
    if split == "test":
        return prepared.x_test, prepared.y_test
    raise PadistillError(f"eval: split must be 'val' or 'test'; got {split!r}")


def evaluate_set(images: torch.Tensor, labels: torch.Tensor, lr, prepared, cfg, split: str = "val",
                 net: str | None = None, runs: int | None = None, epochs: int | None = None,
                 seed_tag: Sequence = (), teacher=None, pre=None, label: str = "",
                 show_progress: bool = False) -> EvalResult:
    """Evaluate one set with `cfg.eval`'s protocol on `split` of the prepared data.

    `lr`: the set's (learned) lr; `cfg.eval.lr` overrides it when set. `pre`: the set's transform, if
    known, is checked against the data's (`check_space`)."""
    x_eval, y_eval = split_tensors(prepared, split)
    if pre is not None:
        check_space(pre, prepared.pre, "evaluate_set")
    name = net or cfg.eval.nets[0]
    use_lr = cfg.eval.lr if cfg.eval.lr is not None else lr
    return evaluate(images, labels, use_lr, net=name, num_classes=prepared.num_classes,
                    channels=prepared.channels, im_size=prepared.image_size, x_test=x_eval, y_test=y_eval,
                    runs=runs or cfg.eval.runs, protocol=Protocol.from_config(cfg.eval, epochs, cfg.sre2l),
                    seed=cfg.seed,
                    seed_tag=seed_tag, device=prepared.device, net_options=net_options(cfg, name),
                    teacher=teacher, label=label, show_progress=show_progress)


def cross_arch(sets: Sequence[EvalSet], nets: Sequence[str], prepared, cfg, split: str = "test",
               runs: int | None = None, epochs: int | None = None, skip: dict | None = None,
               on_run: Callable | None = None, log: Callable = print, show_progress: bool = False) -> EvalTable:
    """Every set on every net; `skip[row][net][run]` = accuracy already measured (resume);
    `on_run(row, net, run, acc)` after each new run."""
    x_eval, y_eval = split_tensors(prepared, split)
    protocol = Protocol.from_config(cfg.eval, epochs, cfg.sre2l)
    table = EvalTable(list(nets))
    for s in sets:
        table.add_row(s.name, s.description, s.baseline)
    for net in nets:
        for s in sets:
            done = {int(k): float(v) for k, v in ((skip or {}).get(s.name, {}).get(net, {})).items()}
            res = evaluate(s.images, s.labels, s.lr, net=net, num_classes=prepared.num_classes,
                           channels=prepared.channels, im_size=prepared.image_size, x_test=x_eval, y_test=y_eval,
                           runs=runs or cfg.eval.runs, protocol=protocol, seed=cfg.seed, device=prepared.device,
                           net_options=net_options(cfg, net), teacher=s.teacher, label=s.name,
                           show_progress=show_progress, skip=done,
                           on_run=(lambda r, a, s=s, net=net: on_run(s.name, net, r, a)) if on_run else None)
            table.add(s.name, res)
            log(f"eval: {s.name:<28s} {net:<12s} {res.cell()} %  ({res.seconds:.0f}s)")
    return table


def train_on_real(prepared, cfg, per_class: int | None = None, epochs: int | None = None, runs: int | None = None,
                  log: Callable = print, show_progress: bool = True) -> EvalResult:
    """Train the config's net on the real training split (all of it, or `per_class` random images of
    each class) with the evaluation protocol; test accuracy on the test split, mean ± std (n)."""
    x, y = prepared.x_train, prepared.y_train
    what = f"all {len(y)} real training images"
    if per_class:
        x, y = random_subset(x, y, prepared.num_classes, per_class, cfg.seed)
        what = f"{per_class} random real images per class"
    protocol = Protocol.from_config(cfg.eval, epochs, cfg.sre2l)
    lr = cfg.eval.lr if cfg.eval.lr is not None else BASELINE_LR
    log(f"train: {cfg.net.name} on {what}, {protocol.epochs + 1} epochs, lr {lr:g}, "
        f"{runs or cfg.eval.runs} run(s)")
    res = evaluate(x, y, lr, net=cfg.net.name, num_classes=prepared.num_classes, channels=prepared.channels,
                   im_size=prepared.image_size, x_test=prepared.x_test, y_test=prepared.y_test,
                   runs=runs or cfg.eval.runs, protocol=protocol, seed=cfg.seed,
                   seed_tag=("real", per_class or "all"), device=prepared.device,
                   net_options=dict(cfg.net.options), label=f"{prepared.dataset.name} ({what})",
                   show_progress=show_progress)
    return res
