"""`padistill select`: a coreset baseline written as a set folder that eval / export / report read like a distilled set.

Input: a resolved config (`select` section; docs/methods/coresets.md), the prepared data, and as the method needs:
the selection-net folder (`select-embed`, trained here when missing and reused after) or the scores folder
(`padistill scores`, computed here when missing and reused after).
Output: a set folder (stage 'select') holding
    images.pt       float32 [C*k, ch, H, W] the chosen training images in the run's model space, class-contiguous
    labels.pt       int64 [C*k] hard labels (class c on rows c*k..(c+1)*k-1)
    lr.pt           the protocol's training lr for real images (eval.lr, or 0.01 as for every real baseline)
    preprocess.pt   the data's ZCA / normalisation transform
    indices.pt      int64 [C*k] original train-split indices of the rows (class by class, in the order chosen)
    grid.png        up to 10 images per class, de-whitened
    manifest.json, config.yaml
Budget: `select.ipc` images per class (default distill.ipc), or `select.ratio` of each class, rounded half up,
where a class's size is counted before the validation hold-out (CIFAR-10 at 20 % = 1000 per class). Every class
gets the same k; a k larger than the smallest class is refused. The whole selection depends on the seed only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

import padistill.select.methods as M
from padistill.config import Config, dump_yaml, to_dict
from padistill.errors import PadistillError
from padistill.utils.io import atomic_save, load_tensors, require_tensor
from padistill.utils.manifest import StageDir, require_complete
from padistill.utils.rng import generator

EMBED_METHODS = ("forgetting", "glister")  # always need the selection net
FEATURE_METHODS = ("herding", "kcenter")  # need it unless select.features=pixels
SCORE_METHODS = ("easy", "hard", "middle")
STAGE = "select"


def needs_embedding(cfg: Config) -> bool:
    s = cfg.select
    return s.method in EMBED_METHODS or (s.method in FEATURE_METHODS and s.features == "embedding")


def budget(cfg: Config, prepared) -> int:
    """Images per class k for the config and data (one-line refusals for impossible budgets)."""
    s = cfg.select
    counts = torch.bincount(prepared.y_train.cpu(), minlength=prepared.num_classes)
    smallest = int(counts.min())
    if s.method == "full":
        if int(counts.max()) != smallest:
            raise PadistillError(f"select.method=full: the classes have {smallest}..{int(counts.max())} training "
                                 "images; a set folder needs the same number per class")
        return smallest
    if s.ratio is not None:
        if not 0.0 < s.ratio <= 1.0:
            raise PadistillError(f"select.ratio: must be in (0, 1] (a fraction of each class); got {s.ratio}")
        val = cfg.data.val_per_class if prepared.y_val is not None else 0
        k = math.floor(s.ratio * (smallest + val) + 0.5)
        where = f"select.ratio={s.ratio:g} of {smallest + val} images per class"
        if k < 1:
            raise PadistillError(f"{where} is 0 images; use a larger ratio or select.ipc")
    else:
        k = s.ipc if s.ipc is not None else cfg.distill.ipc
        where = f"select.ipc={k}"
    if k > smallest:
        raise PadistillError(f"{where}: the smallest class has only {smallest} training images"
                             + (f" after holding out {cfg.data.val_per_class} per class for validation"
                                if prepared.y_val is not None else ""))
    return int(k)


def select_settings(cfg: Config) -> dict:
    """What determines the selection (besides the inputs and the seed)."""
    s = to_dict(cfg.select)
    method = s["method"]
    keep = {"method", "ipc", "ratio"}
    if method in SCORE_METHODS:
        keep |= {"score"}
    if method in FEATURE_METHODS:
        keep |= {"features"}
    if method == "herding" or method == "glister":
        keep |= {"deepcore_compat"}
    if method == "forgetting":
        keep |= {"never_learned"}
    if method == "glister":
        keep |= {"lr"}
    out = {k: v for k, v in s.items() if k in keep}
    out["ipc"] = cfg.select.ipc if cfg.select.ipc is not None else cfg.distill.ipc
    out["lr_protocol"] = cfg.eval.lr
    return out


def _scores_for(cfg: Config, prepared, scores_dir: Path) -> torch.Tensor:
    m = require_complete(scores_dir, "scores", verify=("all_scores.pt",))
    if m.get("inputs", {}).get("data") != prepared.fingerprint():
        raise PadistillError(f"{scores_dir}: scores of other data (or another validation hold-out / preprocessing) "
                             "than this run's")
    path = scores_dir / "all_scores.pt"
    all_scores = load_tensors(path, "scores")
    if not isinstance(all_scores, dict) or cfg.select.score not in all_scores:
        have = ", ".join(sorted(all_scores)) if isinstance(all_scores, dict) else "no named scores"
        raise PadistillError(f"{path}: has no '{cfg.select.score}' scores (has {have}); choose select.score among "
                             "them or compute the scores with scores.method other than file")
    return require_tensor(all_scores[cfg.select.score], f"{path}[{cfg.select.score}]",
                          dtype=(torch.float32, torch.float64), shape=(len(prepared.y_train),))


def choose(cfg: Config, prepared, k: int, embed: dict | None = None, scores: torch.Tensor | None = None
           ) -> list[torch.Tensor]:
    """Per class, the prepared-training-set indices of the chosen samples (in the order chosen)."""
    s = cfg.select
    y = prepared.y_train.cpu()
    yv = prepared.y_val.cpu() if prepared.y_val is not None else None
    out = []
    if s.method == "random":  # the same draw as the evaluation's random baseline of the same size and seed
        from padistill.evaluate.sets import random_subset

        rows, _ = random_subset(torch.arange(len(y)), y, prepared.num_classes, k, cfg.seed)
        return list(rows.view(prepared.num_classes, k))
    if s.method in ("herding", "kcenter"):
        feats = embed["features"] if s.features == "embedding" else prepared.x_train.detach().cpu().flatten(1)
    for c in range(prepared.num_classes):
        idx = torch.nonzero(y == c).flatten()
        if s.method == "full":
            pos = torch.arange(len(idx))
        elif s.method == "herding":
            pos = M.herding(feats[idx], k, farthest=s.deepcore_compat)
        elif s.method == "kcenter":
            start = int(torch.randint(len(idx), (1,), generator=generator(cfg.seed, "select", "kcenter", c)))
            pos = M.kcenter_greedy(feats[idx], k, start)
        elif s.method == "forgetting":
            score = embed["forgetting"][idx].double()
            if s.never_learned == "inf":
                score[~embed["learned"][idx]] = float("inf")
            pos = M.by_score(score, k, "hard", generator(cfg.seed, "select", "forgetting", c))
        elif s.method == "glister":
            vidx = torch.nonzero(yv == c).flatten()
            pos = M.glister(embed["features"][idx], embed["logits"][idx], c, embed["val_features"][vidx],
                            embed["val_logits"][vidx], k, eta=s.lr, static=s.deepcore_compat)
        elif s.method in SCORE_METHODS:
            pos = M.by_score(scores[idx], k, s.method, generator(cfg.seed, "select", s.method, s.score, c))
        else:
            raise PadistillError(f"select.method: unknown method {s.method!r}")
        out.append(idx[pos])
    return out


def run_select(cfg: Config, prepared, out_dir: str | Path, embed_dir: str | Path | None = None,
               scores_dir: str | Path | None = None, overwrite: bool = False, log=print,
               show_progress: bool = True) -> Path:
    """Write (or reuse) the set folder `out_dir` for `cfg.select`; returns it."""
    from padistill.artifacts import save_distilled, save_grid
    from padistill.evaluate.sets import BASELINE_LR

    out = Path(out_dir)
    s = cfg.select
    if s.method == "glister" and prepared.y_val is None:
        raise PadistillError("select.method=glister needs a validation split: set data.val_per_class > 0 "
                             "(it never uses the test set)")
    k = budget(cfg, prepared)
    inputs = {"data": prepared.fingerprint()}
    embed = scores = embed_manifest = None
    t_inputs = 0.0
    if needs_embedding(cfg):
        from padistill.select.embed import load_embed, run_embed

        given = embed_dir is not None and _is_complete(embed_dir, "select-embed")
        embed_dir = Path(embed_dir) if embed_dir is not None else out.parent / "embed"
        t = time.perf_counter()
        if not given:  # a finished folder given by the user is used as it is (its manifest says how it was made)
            run_embed(cfg, prepared, embed_dir, log=log, show_progress=show_progress)
        t_inputs = time.perf_counter() - t
        embed_manifest = require_complete(embed_dir, "select-embed")
        inputs["embed"] = embed_manifest["key"]
        embed = load_embed(embed_dir, prepared, need_val=s.method == "glister")  # same data, or refused
    elif s.method in SCORE_METHODS:
        from padistill.scores import run_scores

        given = scores_dir is not None and _is_complete(scores_dir, "scores")
        scores_dir = Path(scores_dir) if scores_dir is not None else out.parent / "scores"
        t = time.perf_counter()
        if not given:
            run_scores(cfg, prepared, scores_dir, log=log, show_progress=show_progress)
        t_inputs = time.perf_counter() - t
        inputs["scores"] = require_complete(scores_dir, "scores")["key"]
        scores = _scores_for(cfg, prepared, scores_dir)  # same data, or refused
    stage = StageDir(out, STAGE, select_settings(cfg), inputs, cfg.seed, dump_yaml(cfg))
    state = stage.begin(overwrite=overwrite)
    if state == "complete":
        log(f"select: {out} is complete (same method, budget, inputs and seed); reusing it")
        return out
    t0 = time.perf_counter()
    rows = choose(cfg, prepared, k, embed=embed, scores=scores)
    picks = torch.cat(rows)
    if len(torch.unique(picks)) != len(picks):
        raise PadistillError(f"select: method {s.method} chose a sample twice (internal error)")
    seconds = time.perf_counter() - t0
    C = prepared.num_classes
    dev_idx = picks.to(prepared.device)
    images = prepared.x_train[dev_idx]
    labels = torch.arange(C).repeat_interleave(k)
    if not torch.equal(prepared.y_train[dev_idx].cpu(), labels):
        raise PadistillError("select: the chosen rows are not class by class (internal error)")
    lr = torch.tensor(cfg.eval.lr if cfg.eval.lr is not None else BASELINE_LR)
    outputs = save_distilled(out, images, labels, lr, prepared.pre)
    atomic_save(prepared.train_index[picks].clone(), out / "indices.pt")
    shown = min(k, 10)
    grid_rows = torch.cat([torch.arange(c * k, c * k + shown) for c in range(C)]).to(prepared.device)
    save_grid(prepared.pre.inverse(images[grid_rows]), out / "grid.png", nrow=shown)
    outputs += ["indices.pt", "grid.png"]
    features = None
    if s.method in FEATURE_METHODS:
        features = s.features
    extra = {"method": s.method, "ipc": k, "num_images": int(len(picks)), "selection_seconds": round(seconds, 2),
             "input_seconds": round(t_inputs, 1), "features": features}
    if embed_manifest is not None:  # which selection net (and training) the features / counts came from
        extra["selection_net"] = {k: embed_manifest["settings"].get(k) for k in ("net", "epochs", "lr")}
        extra["selection_net"]["test_acc"] = embed_manifest.get("test_acc")
    if s.method == "full":
        from padistill.evaluate.stage import full_data_note

        extra["full_data"] = full_data_note(cfg, len(picks))
        log("select: " + extra["full_data"])
    stage.complete(outputs, **extra)
    log(f"select: {s.method}, {k} per class ({len(picks)} images) chosen in {seconds:.1f}s -> {out}")
    return out


def _is_complete(folder, stage: str) -> bool:
    from padistill.utils.manifest import read_manifest

    m = read_manifest(folder) if Path(folder).is_dir() else None
    return m is not None and m.get("stage") == stage and m.get("status") == "complete"
