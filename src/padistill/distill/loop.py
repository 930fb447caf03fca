"""The distillation outer loop shared by every matcher (TM, DC, DM).

Input: a resolved config, the prepared data, and (for TM) an experts folder (refused when its manifest records
other data or another net).
Output: a distill folder with images.pt / labels.pt / lr.pt / preprocess.pt, manifest.json,
config.yaml, metrics.jsonl, checkpoint.pt and PNG grids (see `padistill.artifacts`).

Per iteration the matcher computes gradients and calls `syn.apply(grads)` (one or more times).
Around it the loop adds what research scripts lack:
- resumable checkpoints every `checkpoint_every` iterations (atomic; images, labels, lr, optimiser
  momenta, counters; iteration randomness is derived from (seed, iteration), so a resumed run is
  bit-identical to an uninterrupted one on CPU); a checkpoint that does not fit the run (structure, iteration
  range, shapes, dtypes, optimiser settings, non-finite values) is refused with one line naming the field;
- a non-finite loss or gradient skips the update, is counted and logged; after `max_bad_steps` in a row
  the run stops with a clear message (the last checkpoint is kept);
- validation evaluations every `eval_every` iterations on a split held out from the TRAINING data
  (never the test set) with the best set kept as best_*.pt;
- metrics.jsonl (loss, per-layer loss, lr, skipped updates, seconds per iteration) and a progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from padistill.artifacts import save_distilled, save_grid
from padistill.config import Config, dump_yaml, to_dict
from padistill.errors import PadistillError
from padistill.experts.storage import check_experts_manifest
from padistill.utils.allocator import tune_cpu_allocator
from padistill.utils.distributed import rank_world
from padistill.utils.io import atomic_save, atomic_write_text, load_tensors, require_keys
from padistill.utils.loggers import MetricsLog
from padistill.utils.manifest import StageDir, require_complete
from padistill.utils.progress import progress_bar

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
COUNTERS = ("skipped", "nonfinite", "bad_streak", "applied")


def distill_settings(cfg: Config) -> dict:
    """The settings that determine the distilled set (bookkeeping intervals excluded)."""
    d = to_dict(cfg.distill)
    for k in ("checkpoint_every", "grid_every", "loggers"):
        d.pop(k)
    if d.get("seed") is None:  # unset: the run's seed decides (same stage key as before the field existed)
        d.pop("seed", None)
    return {"data": to_dict(cfg.data), "net": to_dict(cfg.net), "distill": d}


def build_step(cfg: Config, prepared, experts_dir=None, scores_dir=None, syn_size: int = 0, rank: int = 0,
               world: int = 1, log=print):
    """The configured method's step `(it, syn, update) -> info`, with the student network, its layout and (TM) the
    expert store. The loop decides the filters here: the FIEM cut for every method, FIEX pruning for DC/DM."""
    from padistill.context import build_net, make_augment
    from padistill.filters.params import param_cut
    from padistill.nets import param_layout

    d = cfg.distill
    model = build_net(prepared, seed=0)
    layout = param_layout(model)
    augment = make_augment(d.augment)
    ranges = layout.layer_ranges()
    cut = param_cut(layout.total, d.select.ratio, d.select.mode, boundaries=[a for _, a, _ in ranges])
    if d.method == "tm":
        from padistill.experts.storage import ExpertStore
        from padistill.match.trajectory import Student, TrajectoryMatcher

        store = ExpertStore(experts_dir, max_experts=d.max_experts)
        store.require_fits(layout, cfg.net.name, d.max_start_epoch - 1 + d.expert_epochs)
        student = Student(model, layout, augment, microbatch=d.microbatch or None)
        matcher = TrajectoryMatcher(d, store, student, cut, cfg.seed, syn_size, prepared.image_size,
                                    layer_ranges=ranges, rank=rank, world=world, log=log)
        return matcher.step, model, layout, store
    if d.method in ("dc", "dm"):
        return _feature_step(cfg, prepared, model, layout, augment, cut, scores_dir, rank, log), model, layout, None
    raise PadistillError(f"distill.method: unknown method {d.method!r}")


def _class_pools(cfg: Config, prepared, scores_dir, log):
    """FIEX for DC/DM: per class, the training indices that may be drawn (the hardest / easiest share removed by the
    scores folder's difficulty ordering when `distill.prune` is on)."""
    from padistill.match.pools import ClassPools

    d = cfg.distill
    if d.prune.mode == "none" or d.prune.ratio == 0:
        return ClassPools(prepared.x_train, list(prepared.class_indices()))
    from padistill.filters.schedule import prune_ordering
    from padistill.scores.ordering import load_scores_ordering

    if scores_dir is None:
        raise PadistillError(f"{d.method}: distill.prune needs an ordering; pass --scores <scores folder>")
    # validated: a finished scores folder of these training data, every row = exactly its class's indices
    full = load_scores_ordering(scores_dir, prepared)
    ordering = prune_ordering(full, d.prune.mode, d.prune.ratio)
    which = {"hard": "hardest", "easy": "easiest"}[d.prune.mode]
    log(f"{d.method}: FIEX removes the {d.prune.ratio:.0%} {which} samples of every class "
        f"({full.shape[1]} -> {ordering.shape[1]} per class)")
    return ClassPools(prepared.x_train, list(ordering))


def _feature_step(cfg: Config, prepared, model, layout, augment, cut, scores_dir, rank: int, log):
    """DC / DM: the step function bound to the pools (FIEX), the cut or feature selection (FIEM) and a net factory."""
    from functools import partial

    from padistill.context import build_net

    d = cfg.distill
    pools = _class_pools(cfg, prepared, scores_dir, log)
    if cut.start > 0:
        log(f"{d.method}: FIEM masks the first {cut.start} of {cut.total} parameters ({cut.ratio:.0%})")
    common = {"make_net": partial(build_net, prepared), "pools": pools, "augment": augment,
              "image_size": prepared.image_size, "seed": cfg.seed, "rank": rank}
    if d.method == "dc":
        from padistill.match.gradient import gradient_step

        return partial(gradient_step, d=d, offsets=list(layout.offsets), cut=cut, **common)
    from padistill.filters.params import dm_feature_selection
    from padistill.match.distribution import distribution_step

    selection = dm_feature_selection(model, d.select.mode, d.select.ratio)
    return partial(distribution_step, batch_real=d.batch_real, selection=selection, **common)


def _initial_set(cfg: Config, prepared, model, layout, store, log):
    from padistill.distill.init import init_images, init_labels
    from padistill.distill.synset import SyntheticSet

    d = cfg.distill
    experts = store if d.method == "tm" else None
    image_mode = d.image_init if experts is not None or d.image_init != "correct" else "real"
    images, _ = init_images(prepared, d.ipc, image_mode, cfg.seed, experts=experts, model=model, layout=layout,
                            label_epoch=d.label_model_epoch, log=log)
    labels = init_labels(prepared, images, d.ipc, d.label_init, experts=experts, model=model, layout=layout,
                         label_epoch=d.label_model_epoch, log=log)
    return SyntheticSet(images, labels, d.syn_lr, prepared.num_classes, d)


def _save_checkpoint(path: Path, it: int, syn, counters: dict, best: dict | None) -> None:
    atomic_save({"iteration": it, "synset": syn.state_dict(), "counters": counters, "best": best}, path)


def _trim_metrics(path: Path, upto: int) -> None:
    """Drop metric lines of iterations >= upto (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
        if rec.get("it", -1) < upto:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def run_distill(cfg: Config, prepared, out_dir: str | Path, experts_dir: str | Path | None = None,
                scores_dir: str | Path | None = None, overwrite: bool = False, log=print,
                show_progress: bool = True) -> Path:
    out = Path(out_dir)
    d = cfg.distill
    rank, world = rank_world()
    inputs = {"data": prepared.fingerprint()}
    if d.method == "tm":
        if experts_dir is None:
            raise PadistillError("distill: trajectory matching needs --experts DIR (output of `padistill experts`)")
        manifest = require_complete(experts_dir, "experts")
        check_experts_manifest(experts_dir, manifest, cfg.net.name, cfg.net.options, inputs["data"])
        inputs["experts"] = manifest["key"]
    elif d.prune.mode != "none" and d.prune.ratio > 0:
        if scores_dir is None:
            raise PadistillError(
                f"distill: distill.prune.mode={d.prune.mode} needs --scores DIR (a difficulty ordering)")
        inputs["scores"] = require_complete(scores_dir, "scores")["key"]
    stage = StageDir(out, "distill", distill_settings(cfg), inputs, cfg.seed, dump_yaml(cfg))
    state = stage.begin(overwrite=overwrite) if rank == 0 else "running"
    if world > 1:
        dist.barrier()
    if state == "complete":
        log(f"distill: {out} is complete (same settings and inputs); reusing it")
        return out

    if prepared.device.type == "cpu":
        # glibc returns freed 5-13 MB activations to the OS and page-faults them back every step: raising its
        # thresholds made IPC 10 steps ~30 % faster (IPC 1: ~4 %); see utils/allocator.py.
        tune_cpu_allocator()
    syn_size = prepared.num_classes * d.ipc
    # distill.seed: this stage's randomness only; config.yaml keeps the run's seed, which the evaluation uses
    work = cfg if d.seed is None else dataclasses.replace(cfg, seed=d.seed)
    step, model, layout, store = build_step(work, prepared, experts_dir, scores_dir, syn_size, rank, world, log)
    ckpt_path = out / CHECKPOINT
    counters = dict.fromkeys(COUNTERS, 0)
    best = None
    start_it = 0
    if ckpt_path.is_file():
        syn, start_it, counters, best = _resume(ckpt_path, cfg, prepared)
        log(f"distill: resuming {out} at iteration {start_it}")
    else:
        syn = _initial_set(work, prepared, model, layout, store, log)
        if rank == 0:
            save_grid(prepared.pre.inverse(syn.images.detach()), out / "grid_init.png", nrow=d.ipc)
    if rank == 0:  # lines of a killed attempt from start_it on (all of them if it died before its first checkpoint)
        _trim_metrics(out / METRICS, start_it)
    metrics_f = MetricsLog(out / METRICS, d.loggers, name=cfg.name, config=to_dict(cfg)) if rank == 0 else None
    bar = progress_bar(range(start_it, d.iterations), desc="distill", initial=start_it, total=d.iterations,
                       disable=not show_progress or rank != 0)
    try:
        for it in bar:
            t0 = time.perf_counter()
            info = step(it, syn, syn.apply)
            loss, status = info["loss"], info["status"]
            bad = status == "nonfinite" or not math.isfinite(loss)
            counters["bad_streak"] = counters["bad_streak"] + 1 if bad else 0
            counters["nonfinite" if bad else ("applied" if status == "applied" else "skipped")] += 1
            rec = {"it": it, "loss": loss, "status": "nonfinite" if bad else status,
                   "lr": float(syn.syn_lr.detach()), "seconds": round(time.perf_counter() - t0, 4),
                   "skipped_total": counters["skipped"], "nonfinite_total": counters["nonfinite"],
                   "lr_clamped": syn.lr_clamped}
            rec.update({k: v for k, v in info.items() if k not in ("loss", "status")})
            if metrics_f is not None:
                metrics_f.write(rec)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", skip=counters["skipped"], refresh=False)
            if counters["bad_streak"] > d.max_bad_steps:
                if rank == 0:
                    _save_checkpoint(ckpt_path, it + 1 - counters["bad_streak"], syn, counters, best)
                raise PadistillError(
                    f"distill: {counters['bad_streak']} consecutive non-finite losses/gradients at iteration {it}; "
                    f"lower distill.lr_images / distill.lr_lr or check the experts (checkpoint kept in {out})")
            done = it + 1
            if d.eval_every and done % d.eval_every == 0 and prepared.x_val is not None:
                best = _validate(cfg, prepared, syn, done, best, out, metrics_f, log) if rank == 0 else best
            if rank == 0 and d.grid_every and done % d.grid_every == 0:
                save_grid(prepared.pre.inverse(syn.images.detach()), out / f"grid_{done:06d}.png", nrow=d.ipc)
            if rank == 0 and (done % max(1, d.checkpoint_every) == 0 or done == d.iterations):
                _save_checkpoint(ckpt_path, done, syn, counters, best)
    finally:
        bar.close()
        if metrics_f is not None:
            metrics_f.close()
    if rank == 0:
        outputs = save_distilled(out, syn.images, syn.labels, syn.syn_lr, prepared.pre)
        outputs += [n for n in ("best_images.pt", "best_labels.pt", "best_lr.pt") if (out / n).is_file()]
        save_grid(prepared.pre.inverse(syn.images.detach()), out / "grid_final.png", nrow=d.ipc)
        stage.complete(outputs, counters=counters, best=best, iterations=d.iterations)
        log(f"distill: done, {counters['applied']} updates, {counters['skipped']} skipped by the threshold, "
            f"{counters['nonfinite']} non-finite; lr {float(syn.syn_lr.detach()):.4g}; wrote {out}")
    if world > 1:
        dist.barrier()
    return out


def _resume(path: Path, cfg: Config, prepared):
    """(synthetic set, iteration, counters, best) from checkpoint.pt, every field checked against this run."""
    from padistill.distill.synset import SyntheticSet

    d, C = cfg.distill, prepared.num_classes
    dev = prepared.device
    # an empty set shaped like the one `_initial_set` makes (learned logits only for TM with soft / expert labels)
    labels = (torch.zeros(C * d.ipc, C, device=dev) if d.method == "tm" and d.label_init != "hard"
              else torch.arange(C, device=dev).repeat_interleave(d.ipc))
    syn = SyntheticSet(torch.zeros(C * d.ipc, *prepared.x_train.shape[1:], dtype=prepared.x_train.dtype, device=dev),
                       labels, d.syn_lr, C, d)
    ck = load_tensors(path, "distillation checkpoint")
    try:
        require_keys(ck, ("iteration", "synset", "counters", "best"), "checkpoint")
        it, counters, best = ck["iteration"], require_keys(ck["counters"], COUNTERS, "counters"), ck["best"]
        if not _is_int(it) or not 0 <= it <= d.iterations:
            raise ValueError(f"iteration: expected an integer in 0..{d.iterations}, found {it!r}")
        bad = [k for k in COUNTERS if not _is_int(counters[k]) or counters[k] < 0]
        if bad:
            raise ValueError(f"counters: {', '.join(f'{k}={counters[k]!r}' for k in bad)}; expected integers >= 0")
        if best is not None:
            require_keys(best, ("val_acc", "iteration"), "best")
            acc, at = best["val_acc"], best["iteration"]
            if not (isinstance(acc, (int, float)) and 0 <= acc <= 1 and _is_int(at) and 0 < at <= it):
                raise ValueError(f"best: expected val_acc in [0, 1] and iteration in 1..{it}, found {best!r}")
        syn.load_state_dict(ck["synset"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PadistillError(f"{path}: unusable distillation checkpoint ({msg}); delete it to restart the "
                             "distillation from iteration 0") from None
    return syn, it, {k: counters[k] for k in COUNTERS}, best


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(cfg: Config, prepared, syn, it: int, best: dict | None, out: Path, metrics_f, log) -> dict | None:
    from padistill.evaluate import evaluate_set

    d = cfg.distill
    res = evaluate_set(syn.images.detach(), syn.labels.detach(), syn.syn_lr.detach(), prepared, cfg,
                       split="val", net=cfg.eval.nets[0], runs=1, epochs=d.eval_epochs, seed_tag=("val", it))
    rec = {"it": it - 1, "val_acc": res.mean, "val_runs": len(res.accs)}
    if metrics_f is not None:
        metrics_f.write(rec)
    if best is None or res.mean > best["val_acc"]:
        best = {"val_acc": res.mean, "iteration": it}
        save_distilled(out, syn.images, syn.labels, syn.syn_lr, prepared.pre, prefix="best_")
    log(f"distill: iteration {it}: validation accuracy {res.mean:.2%} "
        f"(best {best['val_acc']:.2%} at {best['iteration']})")
    return best
