"""`padistill scores`: difficulty scores and the per-class easiest-first ordering (paper §3.2, spec §1.4, §2).

Input: a resolved config (`scores` section) and the prepared data (model space, validation held out).
Output folder:
    scores.pt        float32 [N]  per-sample score of `scores.method`, higher = harder (N = prepared training set)
    all_scores.pt    dict name -> float32 [N]: el2n, grand, loss, uncertainty (+ forgetting when tracked)
    ordering.pt      int64 [C, K] per class, easiest first, indices of the prepared training set
                     (= global train indices without a validation hold-out); K = smallest class size
    manifest.json    dataset fingerprint, scorer settings, seeds, per-model test accuracy, dropped samples
    config.yaml
A folder whose manifest matches (same data, same scorer settings, same seed) is reused as is.

Scoring (method el2n | grand | loss | uncertainty | forgetting): `scores.models` networks, each from its own
initialisation seed derived from (seed, model id), trained `scores.epochs` epochs with SGD(lr, momentum,
weight_decay), batch `scores.batch`, DSA if `scores.augment`, through the shared `training.train_epoch`; then
every training image is scored UN-augmented in eval mode and the scores are averaged over the models
(the expectation of eq. 3). Defaults (10 models, 20 epochs) follow the data-diet practice (spec §2).
A finished model's per-sample statistics are saved in partial/ so an interrupted run resumes per model;
under torchrun rank r trains models r, r + world, ... and rank 0 combines them.

method file: imports a published PAD ordering (`scores.file`, spec §1.4), validated against the original
labels (§8.1) and remapped to the prepared training set; scores.pt then holds the within-class normalised
rank (0 = easiest, 1 = hardest), since the files carry no scores.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from padistill.config import Config, dump_yaml, to_dict
from padistill.errors import PadistillError
from padistill.scores.ordering import import_ordering, ordering_from_scores
from padistill.scores.scorers import LOGIT_METHODS, ForgettingTracker, sample_statistics
from padistill.utils.allocator import tune_cpu_allocator
from padistill.utils.distributed import begin_shared_stage, my_share, rank_world, wait_until
from padistill.utils.io import atomic_save, load_tensors, sha256_file
from padistill.utils.manifest import StageDir
from padistill.utils.progress import progress_bar
from padistill.utils.rng import derive_seed, generator

OUTPUTS = ("scores.pt", "all_scores.pt", "ordering.pt")


def scoring_net(cfg: Config) -> tuple[str, dict]:
    """(name, options) of the scoring network: scores.net, or the config's net with its options."""
    if cfg.scores.net is None or cfg.scores.net == cfg.net.name:
        return cfg.net.name, dict(cfg.net.options)
    return cfg.scores.net, {}


def scores_settings(cfg: Config) -> dict:
    """What determines the scores (bookkeeping excluded); the stage key is a hash of this + data + seed."""
    s = cfg.scores
    if s.method == "file":
        if not s.file:
            raise PadistillError("config: scores.method=file needs scores.file=<ordering .pt> (spec §1.4 format)")
        path = Path(s.file).expanduser()
        if not path.is_file():
            raise PadistillError(f"{path}: scores.file not found")
        return {"method": "file", "file": path.name, "file_sha256": sha256_file(path)}
    name, options = scoring_net(cfg)
    d = to_dict(s)
    d.pop("file")
    d["net"] = {"name": name, "options": options}
    d["microbatch"] = cfg.experts.microbatch  # changes float rounding of the summed gradients
    return d


def model_seeds(seed: int, k: int) -> tuple[int, int]:
    """(init seed, data-order seed) of scoring model k, derived from the run seed."""
    return derive_seed(seed, "scores", "init", k), derive_seed(seed, "scores", "data", k)


def train_scoring_model(cfg: Config, prepared, k: int, show_progress: bool = True) -> dict:
    """Train scoring model k and return its per-sample statistics (CPU float32) and accuracies."""
    from padistill.context import build_net, make_augment
    from padistill.training import accuracy, predict, train_epoch

    s = cfg.scores
    init_seed, data_seed = model_seeds(cfg.seed, k)
    name, options = scoring_net(cfg)
    model = build_net(prepared, name=name, seed=init_seed)  # the config's net options apply to the config's net
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    g = generator(cfg.seed, "scores", "data", k)
    augment = make_augment(s.augment)
    x, y = prepared.x_train, prepared.y_train
    tracker = ForgettingTracker(len(y)) if s.method == "forgetting" else None
    bar = progress_bar(range(s.epochs), desc=f"scores model {k + 1}/{s.models}", disable=not show_progress,
                       unit="epoch")
    stats = {"loss": float("nan"), "acc": float("nan")}
    for _ in bar:
        stats = train_epoch(model, opt, x, y, s.batch, g, augment=augment, microbatch=cfg.experts.microbatch)
        if tracker is not None:  # forgetting is recorded on the un-augmented set after every epoch
            tracker.update((predict(model, x).argmax(1) == y).cpu())
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", refresh=False)
    bar.close()
    per_sample = sample_statistics(model, x, y)
    correct = per_sample.pop("correct")
    if tracker is not None:
        per_sample["forgetting"] = tracker.scores()
    per_sample = {k2: v.float().contiguous() for k2, v in per_sample.items()}
    return {"stats": per_sample, "model": k, "init_seed": init_seed, "data_seed": data_seed,
            "train_acc": float(correct.float().mean()), "test_acc": accuracy(model, prepared.x_test, prepared.y_test),
            "last_epoch_loss": stats["loss"]}


def _partial(out: Path, k: int) -> Path:
    return out / "partial" / f"model_{k:03d}.pt"


def _load_partial(path: Path, n: int, where: str) -> dict:
    rec = load_tensors(path, "partial scores")
    if not isinstance(rec, dict) or not isinstance(rec.get("stats"), dict):
        raise PadistillError(f"{path}: not a partial scores file; delete it to recompute {where}")
    for name, t in rec["stats"].items():
        if not isinstance(t, torch.Tensor) or t.shape != (n,):
            raise PadistillError(f"{path}: statistic {name!r} is not a [{n}] tensor; delete it to recompute {where}")
    return rec


def run_scores(cfg: Config, prepared, out_dir: str | Path, overwrite: bool = False, log=print,
               show_progress: bool = True) -> Path:
    """Compute (or reuse) the scores folder `out_dir`; returns its path."""
    out = Path(out_dir)
    s = cfg.scores
    rank, world = rank_world()
    if prepared.device.type == "cpu":
        tune_cpu_allocator()  # ~35% less CPU time per batch on glibc (utils/allocator.py)
    stage = StageDir(out, "scores", scores_settings(cfg), {"data": prepared.fingerprint()}, cfg.seed, dump_yaml(cfg))

    def clear() -> None:
        shutil.rmtree(out / "partial", ignore_errors=True)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)

    state = begin_shared_stage(stage, out, rank, overwrite, clear=clear)
    if state == "complete":
        log(f"scores: {out} is complete (same data, scorer and seed); reusing it")
        return out
    t0 = time.perf_counter()
    labels = prepared.y_train.cpu()
    if s.method == "file":
        if rank == 0:
            _write_file_ordering(cfg, prepared, out, stage, labels, log)
        else:
            wait_until(lambda: stage.state() == "complete", f"{out} (rank 0 imports the ordering)", log)
        return out

    n = len(labels)
    for k in my_share(range(s.models), rank, world):
        path = _partial(out, k)
        if path.is_file():
            _load_partial(path, n, f"model {k}")
            log(f"scores: model {k + 1}/{s.models} already scored ({path.name}); skipping")
            continue
        t = time.perf_counter()
        rec = train_scoring_model(cfg, prepared, k, show_progress=show_progress)
        rec["seconds"] = round(time.perf_counter() - t, 2)
        atomic_save(rec, path)
        log(f"scores: model {k + 1}/{s.models} test acc {rec['test_acc']:.4f} train acc {rec['train_acc']:.4f} "
            f"({rec['seconds']:.0f}s)")
    if rank != 0:
        wait_until(lambda: stage.state() == "complete", f"{out} (rank 0 combines the models)", log)
        return out
    wait_until(lambda: all(_partial(out, k).is_file() for k in range(s.models)),
               f"the scoring models of other ranks in {out / 'partial'}", log)
    records = [_load_partial(_partial(out, k), n, f"model {k}") for k in range(s.models)]
    names = list(records[0]["stats"])
    all_scores = {name: torch.stack([r["stats"][name] for r in records]).mean(0).contiguous() for name in names}
    score = all_scores[s.method]
    # Forgetting counts tie a lot (most samples are never forgotten in a short run): break ties by EL2N.
    tiebreak = all_scores["el2n"] if s.method not in LOGIT_METHODS else None
    ordering, dropped = ordering_from_scores(score, labels, prepared.num_classes, tiebreak=tiebreak)
    _report_dropped(dropped, ordering.shape[1], log)
    atomic_save(score, out / "scores.pt")
    atomic_save(all_scores, out / "all_scores.pt")
    atomic_save(ordering, out / "ordering.pt")
    class_mean = [float(score[labels == c].mean()) for c in range(prepared.num_classes)]
    stage.complete(
        outputs=list(OUTPUTS), scorer=s.method, num_samples=n, per_class=int(ordering.shape[1]),
        dropped_per_class=dropped, class_mean_score=class_mean, seconds=round(time.perf_counter() - t0, 2),
        models=[{k: r[k] for k in ("model", "init_seed", "data_seed", "train_acc", "test_acc", "seconds")
                 if k in r} for r in records])
    shutil.rmtree(out / "partial", ignore_errors=True)
    log(f"scores: {s.method} of {n} samples from {s.models} model(s) -> {out / 'ordering.pt'} "
        f"{list(ordering.shape)}; mean test acc {sum(r['test_acc'] for r in records) / len(records):.4f}")
    return out


def _report_dropped(dropped: list[int], k: int, log) -> None:
    if any(dropped):
        log(f"scores: classes are unbalanced; every row keeps the {k} hardest samples of its class "
            f"(dropped the easiest {sum(dropped)} in total, per class {dropped})")


def _write_file_ordering(cfg: Config, prepared, out: Path, stage: StageDir, labels: torch.Tensor, log) -> None:
    path = Path(cfg.scores.file).expanduser()
    ordering = import_ordering(path, prepared)
    k = ordering.shape[1]
    rank = torch.full((len(labels),), float("nan"))
    rank[ordering.reshape(-1)] = (torch.arange(k, dtype=torch.float32) / max(1, k - 1)).repeat(ordering.shape[0])
    atomic_save(rank, out / "scores.pt")
    atomic_save({"rank": rank}, out / "all_scores.pt")
    atomic_save(ordering, out / "ordering.pt")
    stage.complete(outputs=list(OUTPUTS), scorer="file", source=str(path), num_samples=len(labels), per_class=k,
                   dropped_per_class=[0] * prepared.num_classes)
    log(f"scores: imported {path.name} {list(ordering.shape)} (validated: one row per class, a permutation)")
