"""Helpers for the evaluation / export / report tests: tiny digits data and fake run folders.

A fake run folder has what `padistill distill` leaves (images.pt, labels.pt, lr.pt, preprocess.pt,
config.yaml, manifest.json, metrics.jsonl) without running a distillation: the "distilled" images are
real digits with noisy soft labels, which is all evaluation, export and the report need.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import torch

EVAL_OVERRIDES = ["data.val_per_class=5", "eval.nets=[convnet-2]", "eval.epochs=1", "eval.runs=1",
                  "eval.test_batch=64"]


def eval_config(*extra: str):
    from helpers import tiny_config

    return tiny_config(*EVAL_OVERRIDES, *extra)


@functools.cache
def eval_prepared():
    """Digits with a 5-per-class validation split (cached for the session; CPU; ZCA cache in a temp dir)."""
    os.environ.setdefault("PADISTILL_CACHE", tempfile.mkdtemp(prefix="padistill-cache-"))
    from padistill.context import prepare

    return prepare(eval_config(), log=lambda *_: None)


def soft_labels(num_classes: int, ipc: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    own = torch.arange(num_classes).repeat_interleave(ipc)
    return torch.nn.functional.one_hot(own, num_classes).float() * 4 + 0.5 * torch.randn(len(own), num_classes,
                                                                                          generator=g)


def make_run(root: Path, prepared=None, cfg=None, ipc: int = 2, best: bool = False, metrics: bool = True,
             lr: float = 0.02) -> Path:
    """A run folder `root` with a complete `distill/` stage; returns `root`."""
    from padistill.artifacts import save_distilled
    from padistill.config import dump_yaml
    from padistill.distill.loop import distill_settings
    from padistill.evaluate import random_subset
    from padistill.utils.manifest import StageDir

    prepared = prepared or eval_prepared()
    cfg = cfg or prepared.config
    C = prepared.num_classes
    distill = Path(root) / "distill"
    stage = StageDir(distill, "distill", distill_settings(cfg), {"data": prepared.fingerprint()}, cfg.seed,
                     dump_yaml(cfg))
    stage.begin(overwrite=True)
    x, _ = random_subset(prepared.x_train, prepared.y_train, C, ipc, seed=7)
    outs = save_distilled(distill, x, soft_labels(C, ipc), torch.tensor(lr), prepared.pre)
    if best:
        xb, _ = random_subset(prepared.x_train, prepared.y_train, C, ipc, seed=8)
        outs += save_distilled(distill, xb, soft_labels(C, ipc, seed=1), torch.tensor(lr * 2), prepared.pre,
                               prefix="best_")
    if metrics:
        layers = ["features.0", "features.4", "classifier"]
        with open(distill / "metrics.jsonl", "w", encoding="utf-8") as f:
            for it in range(30):
                rec = {"it": it, "loss": 1.0 / (1 + 0.1 * it), "lr": 0.02 + 1e-4 * it,
                       "status": "applied" if it % 7 else "skipped", "seconds": 0.1,
                       "per_layer": {n: (k + 1) / (1 + 0.1 * it) for k, n in enumerate(layers)}}
                f.write(json.dumps(rec) + "\n")
                if it % 10 == 9:
                    f.write(json.dumps({"it": it, "val_acc": 0.3 + 0.01 * it, "val_runs": 1}) + "\n")
            f.write('{"it": 30, "loss": 0.2, "sta')  # a torn last line, as after a crash
    stage.complete(outs, best={"val_acc": 0.5, "iteration": 20} if best else None, iterations=30)
    return Path(root)
