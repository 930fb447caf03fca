"""`padistill experts`: scheduled expert trajectories (paper §3.2 "Scheduler", spec §1.2-§1.6).

Input: a resolved config (`experts` section, `net`), the prepared data (model space, on the device) and, when
the scheduler is enabled, a finished scores folder (its per-class easiest-first ordering).
Output folder (format in `experts/storage.py`): expert_XXXX.pt with every epoch's flattened parameters
(row 0 = initialisation), layout.json, metrics.jsonl, manifest.json, config.yaml.

Expert k (k = 0 .. experts.num - 1):
- initialisation seed and data-order / DSA generator derived from (seed, k), so expert k is the same whichever
  process trains it and whatever other experts exist;
- epoch e trains on `filters.scheduled_indices(ordering, e, experts.schedule)` (full data when the scheduler is
  disabled), batches of `experts.batch` in a seeded random order, DSA once per batch, through the shared
  `training.train_epoch` (micro-batched forward/backward); optimiser plain SGD or GSAM (`experts/gsam.py`,
  the reference's choice) with lr / momentum / weight decay from the config, constant lr;
- checkpoint e+1 = parameters after epoch e; test accuracy every `eval_every` epochs (and after the last).

Resume: after EVERY epoch the state needed to continue (parameters so far [e+1, P], model and optimiser state,
generator state, epoch, log) is written atomically to partial/expert_XXXX.pt. Killing the process at any
point and running the same command again continues each expert from its last completed epoch; because all
randomness comes from the saved generator, the finished trajectory is bit-identical to an uninterrupted run
(CPU, same seed, same thread count).

Scale-out: under torchrun rank r trains experts r, r + world, ... into the same folder (which must be on a file
system all ranks see); rank 0 writes the manifest once every expert file exists (utils/distributed.py explains
why this waits on files, not on a collective barrier).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from padistill.config import Config, dump_yaml, to_dict
from padistill.errors import PadistillError
from padistill.experts.gsam import GSAM
from padistill.experts.storage import EXPERT_RE, LAYOUT_FILE, expert_path, save_expert
from padistill.filters.schedule import kept_columns, prune_ordering, schedule_settings, scheduled_indices
from padistill.nets.layout import ParamLayout
from padistill.utils.allocator import tune_cpu_allocator
from padistill.utils.distributed import begin_shared_stage, my_share, rank_world, wait_until
from padistill.utils.io import atomic_save, atomic_write_json, atomic_write_text, load_tensors, read_json
from padistill.utils.manifest import StageDir, require_complete
from padistill.utils.progress import progress_bar
from padistill.utils.rng import derive_seed, generator

METRICS = "metrics.jsonl"
PARTIAL = "partial"


def experts_settings(cfg: Config) -> dict:
    """What determines the trajectories (the stage key hashes this + inputs + seed); eval_every is bookkeeping."""
    e = to_dict(cfg.experts)
    e.pop("eval_every")
    e["schedule"] = schedule_settings(cfg.experts.schedule)
    if not static_prune(cfg):
        e.pop("prune")  # keys of folders made before experts.prune existed stay the same
    if e["optimizer"] == "sgd":
        for k in ("rho", "alpha", "adaptive"):
            e.pop(k)
    return {"net": to_dict(cfg.net), "experts": e}


def expert_seeds(seed: int, k: int) -> tuple[int, int]:
    """(init seed, data-order seed) of expert k (the latter seeds `generator(seed, 'experts', 'data', k)`)."""
    return derive_seed(seed, "experts", "init", k), derive_seed(seed, "experts", "data", k)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    e = cfg.experts
    if e.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay)
    if e.optimizer == "gsam":
        return GSAM(model.parameters(), lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay, rho=e.rho,
                    alpha=e.alpha, adaptive=e.adaptive, model=model)
    raise PadistillError(f"config: 'experts.optimizer' must be gsam or sgd; got {e.optimizer!r}")


def schedule_sizes(cfg: Config, ordering: torch.Tensor | None, n_train: int) -> list[int]:
    """Training-set size of every epoch; raises before any training if the schedule empties a class."""
    if ordering is None:
        return [n_train] * cfg.experts.epochs
    C, K = ordering.shape
    out = []
    for epoch in range(cfg.experts.epochs):
        a, b = kept_columns(epoch, K, cfg.experts.schedule)
        out.append(C * (b - a))
    return out


def static_prune(cfg: Config) -> bool:
    """Whether experts.prune removes anything (Fig. 2's TM panel: static FIEX for the experts)."""
    return cfg.experts.prune.mode != "none" and cfg.experts.prune.ratio > 0


def uses_scores(cfg: Config) -> bool:
    """Whether the experts train from a scores folder's ordering (the scheduler, the static prune or both)."""
    return cfg.experts.schedule.enabled or static_prune(cfg)


def _load_ordering(cfg: Config, prepared, scores_dir, log) -> tuple[torch.Tensor | None, dict]:
    """The easiest-first ordering the experts train from: None (all data) unless the scheduler or the static prune is
    on; the static prune (if any) is applied here, so the scheduler (if on) runs over what it kept."""
    sch, prune = cfg.experts.schedule, cfg.experts.prune
    if not uses_scores(cfg):
        if scores_dir is not None:
            log("experts: experts.schedule.enabled is false; training on the full data (the scores folder is unused)")
        return None, {}
    if scores_dir is None:
        what = ("the data scheduler (experts.schedule.enabled=true)" if sch.enabled else
                f"the static prune (experts.prune.mode={prune.mode})")
        raise PadistillError(f"experts: {what} needs --scores DIR (output of `padistill scores`), or turn it off "
                             "for full data")
    from padistill.scores.ordering import load_scores_ordering

    ordering = load_scores_ordering(scores_dir, prepared)
    if static_prune(cfg):
        full = ordering.shape[1]
        ordering = prune_ordering(ordering, prune.mode, prune.ratio)
        log(f"experts: static prune removes the {prune.mode}est {full - ordering.shape[1]} of {full} samples per "
            f"class for every epoch")
    return ordering, {"scores": require_complete(scores_dir, "scores")["key"]}


def _clear_outputs(out: Path) -> None:
    """--overwrite over a different run: never continue another run's experts or partial states."""
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    for p in out.iterdir():
        if EXPERT_RE.match(p.name) or p.name in (LAYOUT_FILE, METRICS):
            p.unlink()


def _partial_path(out: Path, k: int) -> Path:
    return out / PARTIAL / f"expert_{k:04d}.pt"


def train_expert(cfg: Config, prepared, k: int, out: Path, ordering: torch.Tensor | None, log=print,
                 show_progress: bool = True) -> Path:
    """Train (or resume) expert k and save expert_XXXX.pt; returns its path."""
    from padistill.context import build_net, make_augment
    from padistill.nets import param_layout
    from padistill.training import accuracy, train_epoch

    e = cfg.experts
    init_seed, data_seed = expert_seeds(cfg.seed, k)
    model = build_net(prepared, seed=init_seed)
    layout = param_layout(model)
    opt = make_optimizer(cfg, model)
    g = generator(cfg.seed, "experts", "data", k)
    augment = make_augment(e.augment)
    x, y = prepared.x_train, prepared.y_train
    params = torch.empty(e.epochs + 1, layout.total, dtype=torch.float32)
    params[0] = layout.flatten([p.detach() for p in model.parameters()]).cpu()
    history: list[dict] = []
    start = 0
    ppath = _partial_path(out, k)
    if ppath.is_file():
        state = load_tensors(ppath, "partial expert state")
        try:
            done = int(state["epoch"])
            rows = state["params"]
            if rows.shape != (done + 1, layout.total) or not 0 < done <= e.epochs:
                raise ValueError(f"params {list(rows.shape)} for epoch {done}")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"])
            params[: done + 1] = rows
            history = list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise PadistillError(f"{ppath}: unusable partial state ({str(err).splitlines()[0][:160]}); delete it to "
                                 f"restart expert {k}") from None
        start = done
        log(f"experts: resuming expert {k} after epoch {done}/{e.epochs}")
    bar = progress_bar(range(start, e.epochs), desc=f"expert {k + 1}/{e.num}", total=e.epochs, initial=start,
                       disable=not show_progress, unit="epoch", leave=False)
    metrics_path = out / METRICS
    for epoch in bar:
        t0 = time.perf_counter()
        idx = scheduled_indices(ordering, epoch, e.schedule) if ordering is not None else None
        stats = train_epoch(model, opt, x, y, e.batch, g, augment=augment, microbatch=e.microbatch, indices=idx)
        params[epoch + 1] = layout.flatten([p.detach() for p in model.parameters()]).cpu()
        last = epoch + 1 == e.epochs
        test_acc = None
        if e.eval_every and ((epoch + 1) % e.eval_every == 0 or last):
            test_acc = accuracy(model, prepared.x_test, prepared.y_test)
        rec = {"expert": k, "epoch": epoch + 1, "train_size": stats["samples"], "train_loss": stats["loss"],
               "train_acc": stats["acc"], "test_acc": test_acc, "seconds": round(time.perf_counter() - t0, 3)}
        if not (torch.isfinite(params[epoch + 1]).all() and stats["loss"] == stats["loss"]):
            raise PadistillError(f"experts: expert {k} diverged at epoch {epoch + 1} (non-finite parameters or loss); "
                                 "lower experts.lr")
        history.append(rec)
        # the log line first: a kill between the two then replays the epoch (its line is written again, the last one
        # wins) instead of losing its wall time, which only this log keeps
        with open(metrics_path, "a", encoding="utf-8") as f:  # monitoring log; rebuilt from the meta at the end
            f.write(json.dumps(rec) + "\n")
        if not last:  # the finished expert file replaces the partial state
            atomic_save({"epoch": epoch + 1, "params": params[: epoch + 2].clone(), "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "generator": g.get_state(), "history": history}, ppath)
        bar.set_postfix(n=stats["samples"], loss=f"{stats['loss']:.3f}",
                        test="-" if test_acc is None else f"{test_acc:.3f}", refresh=False)
    bar.close()
    dtype = torch.float16 if e.save_dtype == "float16" else torch.float32
    meta = {"expert": k, "init_seed": init_seed, "data_seed": data_seed, "net": cfg.net.name,
            "optimizer": e.optimizer, "train_size": [r["train_size"] for r in history],
            "test_acc": [r["test_acc"] for r in history],
            # wall times stay in metrics.jsonl: the expert file holds only what the seed decides (same seed, same bytes)
            "history": [{k2: v for k2, v in r.items() if k2 != "seconds"} for r in history]}
    # Through JSON: pickle memoises shared objects, and a resumed run's history (read back from the partial state)
    # shares other strings than a fresh one; a canonical copy makes the file the same bytes either way.
    path = save_expert(out, k, params.to(dtype), json.loads(json.dumps(meta)))
    ppath.unlink(missing_ok=True)
    final = next((r["test_acc"] for r in reversed(history) if r["test_acc"] is not None), None)
    log(f"experts: expert {k + 1}/{e.num} done" + (f", test acc {final:.4f}" if final is not None else ""))
    return path


def _write_layout(out: Path, model_layout) -> None:
    path = out / LAYOUT_FILE
    if path.is_file():
        if ParamLayout.from_json(read_json(path, "expert layout"), str(path)) != model_layout:
            raise PadistillError(f"{path}: describes another network than net '{model_layout}'")
        return
    atomic_write_json(path, model_layout.to_json())


def _logged_seconds(path: Path) -> dict[tuple, float]:
    """{(expert, epoch): seconds} from the live metrics.jsonl (last line wins after a resume; torn lines skipped)."""
    out: dict[tuple, float] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                out[(r["expert"], r["epoch"])] = r["seconds"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _finish(out: Path, stage: StageDir, cfg: Config, sizes: list[int], t0: float, log) -> None:
    """Rank 0, all expert files present: metrics.jsonl rebuilt from the experts' meta, manifest complete."""
    from padistill.experts.storage import ExpertStore

    store = ExpertStore(out)
    if len(store) < cfg.experts.num:
        raise PadistillError(f"{out}: {len(store)} expert files, expected {cfg.experts.num}")
    seconds = _logged_seconds(out / METRICS)
    lines, finals = [], []
    for i in range(len(store)):
        hist = store.meta(i).get("history", [])
        lines += [json.dumps({**r, "seconds": seconds.get((r.get("expert"), r.get("epoch")))}) for r in hist]
        finals.append(next((r["test_acc"] for r in reversed(hist) if r["test_acc"] is not None), None))
    atomic_write_text(out / METRICS, "".join(line + "\n" for line in lines))
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    accs = [a for a in finals if a is not None]
    stage.complete(outputs=[LAYOUT_FILE], num=cfg.experts.num, epochs=cfg.experts.epochs, params=store.layout.total,
                   save_dtype=cfg.experts.save_dtype, train_size_per_epoch=sizes, final_test_acc=finals,
                   mean_final_test_acc=sum(accs) / len(accs) if accs else None,
                   seconds=round(time.perf_counter() - t0, 2))
    if accs:
        log(f"experts: {len(store)} experts x {cfg.experts.epochs} epochs in {out}; final test acc "
            f"{min(accs):.4f}..{max(accs):.4f} (mean {sum(accs) / len(accs):.4f})")


def run_experts(cfg: Config, prepared, out_dir: str | Path, scores_dir: str | Path | None = None,
                overwrite: bool = False, log=print, show_progress: bool = True) -> Path:
    """Train (or resume, or reuse) the experts folder `out_dir`; returns its path."""
    from padistill.context import build_net
    from padistill.nets import param_layout

    out = Path(out_dir)
    e = cfg.experts
    rank, world = rank_world()
    if prepared.device.type == "cpu":
        tune_cpu_allocator()  # ~35% less CPU time per batch on glibc (utils/allocator.py)
    ordering, inputs = _load_ordering(cfg, prepared, scores_dir, log)
    sizes = schedule_sizes(cfg, ordering, len(prepared.y_train))  # fails now, not at epoch 61
    stage = StageDir(out, "experts", experts_settings(cfg), {"data": prepared.fingerprint(), **inputs}, cfg.seed,
                     dump_yaml(cfg))
    layout = param_layout(build_net(prepared, seed=0))

    def create(state: str) -> None:
        if state != "complete":
            _write_layout(out, layout)
            (out / PARTIAL).mkdir(exist_ok=True)

    state = begin_shared_stage(stage, out, rank, overwrite, clear=lambda: _clear_outputs(out), prepare=create)
    if state == "complete":
        log(f"experts: {out} is complete (same settings and inputs); reusing it")
        return out
    t0 = time.perf_counter()
    if ordering is not None:
        log(f"experts: scheduler on {list(ordering.shape)} ordering; train size per epoch "
            f"{sizes[0]} (epoch 1) .. {max(sizes)} .. {sizes[-1]} (epoch {e.epochs})")
    mine = my_share(range(e.num), rank, world)
    todo = [k for k in mine if not expert_path(out, k).is_file()]
    if len(todo) < len(mine):
        log(f"experts: {len(mine) - len(todo)} expert(s) already finished in {out}")
    for k in todo:
        train_expert(cfg, prepared, k, out, ordering, log=log, show_progress=show_progress and rank == 0)
    if rank != 0:
        wait_until(lambda: stage.state() == "complete", f"{out} (rank 0 writes the manifest)", log)
        return out
    wait_until(lambda: all(expert_path(out, k).is_file() for k in range(e.num)),
               f"the experts of other ranks in {out}", log)
    _finish(out, stage, cfg, sizes, t0, log)
    return out
