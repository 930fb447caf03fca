"""`padistill sweep`: run every cell of a spec with shared stages, paired evaluations and one results table.

Input: a `Spec` (sweep/spec.py), an output folder, optional `--reuse` folders and `--jobs N`.
Output folder:
    sweep.yaml                 the spec as given (+ command-line overrides, distill seeds)
    sweep.json                 cells, stage folders, what each task did and its wall time
    stages/scores-<key12>/     scores and experts, one folder per stage key, shared by every cell that needs it
    stages/experts-<key12>/
    cells/<name>/              an ordinary run folder per cell: config.yaml, distill/, eval/ (repeat k >= 1 of
    cells/<name>/seed-<k>/     `distill_seeds` in seed-<k>/), cell.json (its stage folders and settings)
    logs/                      one log per task run as a separate process (--jobs N > 1)
    table.md, table.csv, results.json   mean ± std (n) per cell and net; paired difference vs the baseline cell

Sharing: the stage key of every scores / experts / distill stage is computed up front from the same settings
functions the stages use (`scores_settings`, `experts_settings`, `distill_settings`), so cells that differ only in
distillation settings use one experts folder and nothing is trained twice. `--reuse DIR`: any complete stage
folder under DIR (found by its manifest.json) whose stage and key equal a needed one is copied in instead of
being rebuilt (scores, experts, distill, and eval, whose key is known once the distilled set exists).
Scale-out: `--jobs N` runs tasks as N local processes; under torchrun the ranks share the tasks round-robin and
wait for each other's stage folders on the file system (no process group is needed).
Pairing: every cell keeps the run's seed (distill_seeds vary `distill.seed` only), so evaluation run r of every
cell trains the same initialisation on the same data order. Resume: each stage resumes or reuses its folder;
a cell whose settings changed since its folder was made is refused, naming the cell, unless --overwrite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from padistill.config import Config, dump_yaml, to_dict
from padistill.errors import PadistillError
from padistill.sweep.spec import Spec
from padistill.utils.io import atomic_write_json, atomic_write_text, read_json
from padistill.utils.manifest import MANIFEST, StageDir

CELL_FILE = "cell.json"


@dataclass(eq=False)  # tasks are compared by identity (a shared stage is one object)
class Task:
    kind: str  # scores | experts | distill | eval
    folder: Path
    config: Config
    key: str | None = None
    deps: list = field(default_factory=list)
    label: str = ""
    scores: Path | None = None
    experts: Path | None = None
    distill: Path | None = None
    overwrite: bool = False
    users: list = field(default_factory=list)  # cells that need it
    state: str = "missing"  # at planning: complete | running | missing | reuse
    reuse_from: Path | None = None
    outcome: str = ""  # built | resumed | reused | copied | failed | skipped
    seconds: float = 0.0
    follow: Task | None = None  # distill: its cell's evaluation (one worker process runs both with --jobs N)


# ------------------------------------------------------------------------------------------ reuse pool


class ReusePool:
    """Complete stage folders found under the --reuse folders, by (stage, key)."""

    def __init__(self, roots=(), exclude: Path | None = None):
        self.found: dict[tuple[str, str], Path] = {}
        self.roots = [Path(r) for r in roots]
        ex = exclude.resolve() if exclude is not None else None
        for root in self.roots:
            if not root.is_dir():
                raise PadistillError(f"--reuse {root}: folder not found")
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                here = Path(dirpath)
                if ex is not None and (here.resolve() == ex or ex in here.resolve().parents):
                    dirnames[:] = []
                    continue
                if MANIFEST not in filenames:
                    continue
                try:
                    m = json.loads((here / MANIFEST).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(m, dict) and m.get("status") == "complete" and "stage" in m and "key" in m:
                    self.found.setdefault((str(m["stage"]), str(m["key"])), here)

    def get(self, stage: str, key: str | None) -> Path | None:
        return self.found.get((stage, key)) if key else None

    def __len__(self) -> int:
        return len(self.found)


def copy_stage(src: Path, dst: Path) -> None:
    """Copy a complete stage folder into place (temp + rename; a partial folder at dst is replaced)."""
    tmp = dst.parent / f".{dst.name}.copy-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("partial", "*.tmp*"))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


# ------------------------------------------------------------------------------------------ keys


def _data_key(cfg: Config) -> str:
    return json.dumps([to_dict(cfg.data), cfg.seed if cfg.data.val_per_class > 0 else None, cfg.device],
                      sort_keys=True, default=str)


class PreparedCache:
    """Prepared data per distinct data settings; each cell gets a view with its own config.

    `folder`: where the model-space tensors are cached for worker processes (`--jobs N`), one file per data key."""

    def __init__(self, log, folder: Path | None = None):
        self.cache: dict[str, object] = {}
        self.log = log
        self.folder = folder

    def file(self, cfg: Config) -> Path | None:
        if self.folder is None:
            return None
        import hashlib

        return self.folder / f"data-{hashlib.sha256(_data_key(cfg).encode()).hexdigest()[:16]}.pt"

    def get(self, cfg: Config):
        from padistill.context import prepare

        k = _data_key(cfg)
        if k not in self.cache:
            self.cache[k] = prepare(cfg, log=self.log, model_space_cache=self.file(cfg))
        return dataclasses.replace(self.cache[k], config=cfg)

    def clear(self) -> None:
        self.cache.clear()


def stage_key(stage: str, settings: dict, inputs: dict, seed: int) -> str:
    return StageDir(Path("."), stage, settings, inputs, seed).key


def eval_settings(cfg: Config) -> dict:
    """What `padistill eval` hashes into its key (one owner: evaluate.stage.eval_settings)."""
    from padistill.evaluate.stage import eval_settings as settings

    return settings(cfg.eval)


def eval_key(cfg: Config, fingerprint: str, distill_dir: Path) -> str | None:
    """The key `run_eval` will give the evaluation of `distill_dir` with `cfg` (None: not predictable: KD, or the
    SRe2L protocol, whose key holds its teacher's)."""
    from padistill.evaluate.stage import _file_hashes

    if cfg.eval.kd_teacher or cfg.eval.protocol != "tm":
        return None
    hashed = ["images.pt", "labels.pt", "lr.pt", "preprocess.pt"]
    if (distill_dir / "best_images.pt").is_file():
        hashed += ["best_images.pt", "best_labels.pt", "best_lr.pt"]
    inputs = {"data": fingerprint, "set": _file_hashes(distill_dir, hashed)}
    return stage_key("eval", eval_settings(cfg), inputs, cfg.seed)


def _folder_state(folder: Path, stage: str, key: str) -> str:
    m_path = folder / MANIFEST
    if not m_path.is_file():
        return "missing"
    try:
        m = json.loads(m_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "different"
    if m.get("stage") != stage or m.get("key") != key:
        return "different"
    return "complete" if m.get("status") == "complete" else "running"


# ------------------------------------------------------------------------------------------ planning


@dataclass
class Plan:
    root: Path
    tasks: list[Task]  # topological order
    cells: dict  # cell name -> list of (replicate folder, distill task, eval task)
    fingerprints: dict  # replicate folder -> data fingerprint


def _diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def make_plan(spec: Spec, root: Path, pool: ReusePool, prepared: PreparedCache, overwrite: bool) -> Plan:
    from padistill.distill.loop import distill_settings
    from padistill.experts.train import experts_settings, uses_scores
    from padistill.pipeline import needs_scores
    from padistill.scores.stage import scores_settings

    shared: dict[tuple[str, str], Task] = {}
    tasks: list[Task] = []
    cells: dict = {}
    fps: dict = {}
    changed: list[str] = []

    def shared_task(kind: str, key: str, cfg: Config, user: str, **inputs) -> Task:
        t = shared.get((kind, key))
        if t is None:
            t = Task(kind, root / "stages" / f"{kind}-{key[:12]}", cfg, key, label=f"{kind}-{key[:12]}", **inputs)
            shared[(kind, key)] = t
        t.users.append(user)
        return t

    per_cell: list[tuple] = []
    for cell in spec.cells:
        cells[cell.name] = []
        for rep in cell.replicates:
            cfg = rep.config
            prep = prepared.get(cfg)
            fp = prep.fingerprint()
            fps[rep.folder] = fp
            user = cell.name if rep.index == 0 else f"{cell.name}/seed-{rep.index}"
            scores_t = experts_t = None
            if needs_scores(cfg):
                key = stage_key("scores", scores_settings(cfg), {"data": fp}, cfg.seed)
                scores_t = shared_task("scores", key, cfg, user)
            inputs = {"data": fp}
            if cfg.distill.method == "tm":
                e_inputs = {"data": fp}
                if uses_scores(cfg):
                    e_inputs["scores"] = scores_t.key
                key = stage_key("experts", experts_settings(cfg), e_inputs, cfg.seed)
                experts_t = shared_task("experts", key, cfg, user, scores=scores_t.folder if scores_t else None)
                if scores_t is not None and scores_t not in experts_t.deps:
                    experts_t.deps.append(scores_t)
                inputs["experts"] = key
            elif scores_t is not None:
                inputs["scores"] = scores_t.key
            dkey = stage_key("distill", distill_settings(cfg), inputs, cfg.seed)
            folder = root / rep.folder
            dist_t = Task("distill", folder / "distill", cfg, dkey, label=f"distill {user}",
                          scores=scores_t.folder if scores_t else None,
                          experts=experts_t.folder if experts_t else None, overwrite=overwrite, users=[user])
            dist_t.deps = [t for t in (scores_t, experts_t) if t is not None]
            eval_t = Task("eval", folder / "eval", cfg, None, deps=[dist_t], label=f"eval {user}",
                          distill=folder / "distill", overwrite=overwrite, users=[user])
            dist_t.follow = eval_t
            # a changed spec: refuse the cell (not a stage deep inside it) unless --overwrite
            record = folder / CELL_FILE
            st = _folder_state(dist_t.folder, "distill", dkey)
            why = None
            made = st != "missing" or (folder / "eval" / MANIFEST).is_file()  # nothing made yet: nothing to refuse
            if made and record.is_file():
                old = read_json(record, "sweep cell record")
                if isinstance(old, dict) and (old.get("distill_key") != dkey or
                                              old.get("eval_settings") != eval_settings(cfg)):
                    why = "; ".join(_diff_configs(old.get("config") or {}, to_dict(cfg))[:4]) or "its stage inputs"
            if why is None and st == "different":
                why = f"{dist_t.folder} holds another distillation"
            if why is not None and not overwrite:
                changed.append(f"cell '{user}' ({folder}): changed since it was made ({why})")
            cells[cell.name].append((rep, dist_t, eval_t))
            per_cell.append((dist_t, eval_t))
    if changed:
        raise PadistillError("sweep: " + " | ".join(changed) + "; pass --overwrite to redo these cells, or choose "
                             "another --out")
    for t in shared.values():
        if t.kind == "scores":
            tasks.append(t)
    for t in shared.values():
        if t.kind == "experts":
            tasks.append(t)
    for d, e in per_cell:
        tasks += [d, e]
    for t in tasks:
        if t.kind == "eval":
            t.state = "complete" if _eval_complete(t) else "missing"
            continue
        t.state = _folder_state(t.folder, t.kind, t.key)
        if t.state == "different" and t.overwrite:
            t.state = "missing"
        if t.state != "complete":
            src = pool.get(t.kind, t.key)
            if src is not None:
                t.state, t.reuse_from = "reuse", src
    return Plan(root, tasks, cells, fps)


def _eval_complete(t: Task) -> bool:
    m = t.folder / MANIFEST
    if not m.is_file() or not (t.folder / "results.json").is_file():
        return False
    try:
        return json.loads(m.read_text(encoding="utf-8")).get("status") == "complete"
    except (OSError, ValueError):
        return False


def _work(t: Task) -> str:
    c = t.config
    if t.kind == "scores":
        s = c.scores
        return "import an ordering file" if s.method == "file" else f"{s.models} models x {s.epochs} epochs"
    if t.kind == "experts":
        e = c.experts
        data = "scheduled" if e.schedule.enabled else "all data"
        from padistill.experts.train import static_prune

        if static_prune(c):
            data += f", {e.prune.mode}est {e.prune.ratio:.0%} removed"
        return f"{e.num} experts x {e.epochs} epochs ({data}, {e.optimizer})"
    if t.kind == "distill":
        d = c.distill
        steps = f" x {d.syn_steps} student steps" if d.method == "tm" else ""
        return f"{d.method} ipc {d.ipc}: {d.iterations} iterations{steps}"
    e = c.eval
    return (f"{len(e.nets)} net(s) x {e.runs} runs x {e.epochs + 1} epochs"
            + (" + the random real subset" if e.baseline else ""))


def describe_plan(plan: Plan, spec: Spec, jobs: int, threads: int | None) -> str:
    words = {"complete": "done", "running": "resume", "missing": "build", "reuse": "copy"}
    lines = [f"sweep: {spec.name}: {len(spec.cells)} cell(s) x {spec.distill_seeds} distillation(s), baseline "
             f"'{spec.baseline}' -> {plan.root}"]
    if jobs > 1:
        lines.append(f"sweep: {jobs} processes x {threads} thread(s) each")
    for t in plan.tasks:
        what = words.get(t.state, t.state)
        if t.kind == "eval" and t.state == "missing":
            what = "run (or copy a matching eval once the set exists)"
        src = f" from {t.reuse_from}" if t.reuse_from else ""
        rel = t.folder.relative_to(plan.root) if t.folder.is_relative_to(plan.root) else t.folder
        users = f"  [{', '.join(t.users)}]" if t.kind in ("scores", "experts") else ""
        lines.append(f"  {t.kind:8s} {str(rel):40s} {what}{src}: {_work(t)}{users}")
    todo = [t for t in plan.tasks if t.state in ("missing", "running")]
    n_exp = sum(t.config.experts.num * t.config.experts.epochs for t in todo if t.kind == "experts")
    n_sc = sum(t.config.scores.models * t.config.scores.epochs for t in todo
               if t.kind == "scores" and t.config.scores.method != "file")
    n_it = sum(t.config.distill.iterations for t in todo if t.kind == "distill")
    n_st = sum(t.config.distill.iterations * t.config.distill.syn_steps for t in todo
               if t.kind == "distill" and t.config.distill.method == "tm")
    n_ev = sum(len(t.config.eval.nets) * t.config.eval.runs * (1 + t.config.eval.baseline) for t in todo
               if t.kind == "eval")
    n_ep = sum(len(t.config.eval.nets) * t.config.eval.runs * (1 + t.config.eval.baseline) * (t.config.eval.epochs + 1)
               for t in todo if t.kind == "eval")
    lines.append(f"sweep: work left (upper bound for stages that resume): {n_sc} scoring-model epochs, {n_exp} expert "
                 f"epochs, {n_it} distillation iterations ({n_st} student steps), {n_ev} evaluation trainings "
                 f"({n_ep} epochs on the small sets)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ running


def run_task(t: Task, prepared, log, show_progress: bool) -> None:
    """Run one stage in this process (the same calls `padistill run` makes)."""
    if t.kind == "scores":
        from padistill.scores import run_scores

        run_scores(t.config, prepared, t.folder, log=log, show_progress=show_progress)
    elif t.kind == "experts":
        from padistill.experts import run_experts

        run_experts(t.config, prepared, t.folder, scores_dir=t.scores, log=log, show_progress=show_progress)
    elif t.kind == "distill":
        from padistill.distill import run_distill

        run_distill(t.config, prepared, t.folder, experts_dir=t.experts, scores_dir=t.scores,
                    overwrite=t.overwrite, log=log, show_progress=show_progress)
    elif t.kind == "eval":
        from padistill.evaluate import run_eval

        run_eval(t.distill, out=t.folder, prepared=prepared, overwrite=t.overwrite, log=log,
                 show_progress=show_progress)
    else:  # pragma: no cover - tasks are made by make_plan
        raise PadistillError(f"sweep: unknown task kind {t.kind!r}")


def _write_cell_record(plan: Plan, rep, dist_t: Task, eval_t: Task, cell) -> None:
    folder = plan.root / rep.folder
    folder.mkdir(parents=True, exist_ok=True)
    rel = {k: os.path.relpath(v, folder) if v is not None else None
           for k, v in (("scores", dist_t.scores), ("experts", dist_t.experts))}
    atomic_write_json(folder / CELL_FILE, {
        "cell": cell.name, "replicate": rep.index, "distill_seed": rep.config.distill.seed,
        "overrides": cell.overrides, "distill_key": dist_t.key, "eval_settings": eval_settings(rep.config),
        "stages": rel, "config": to_dict(rep.config)})
    atomic_write_text(folder / "config.yaml", dump_yaml(rep.config))


def default_threads(jobs: int) -> int:
    """Each job's share of this process's thread budget (utils.threads: --threads, PADISTILL_THREADS,
    OMP_NUM_THREADS, else the CPUs the affinity mask and cgroup quota allow), at least one."""
    from padistill.utils.threads import choose_threads

    return max(1, choose_threads()[0] // max(1, jobs))


def run_sweep(spec: Spec, out: str | Path | None = None, reuse=(), jobs: int = 1, overwrite: bool = False,
              plan_only: bool = False, log=print, show_progress: bool = True) -> Path:
    t_start = time.perf_counter()
    if jobs < 1:
        raise PadistillError(f"--jobs must be >= 1; got {jobs}")
    rank, world = ranks()
    if world > 1:
        if jobs > 1:
            raise PadistillError("sweep: --jobs N and torchrun both spread the cells; use one of them")
        _device_per_rank(spec)
    root = Path(out) if out else Path("runs") / "sweeps" / spec.name
    pool = ReusePool(reuse, exclude=root)
    if reuse:
        log(f"sweep: {len(pool)} complete stage folder(s) found under {', '.join(str(r) for r in reuse)}")
    cache = PreparedCache(log, folder=root / ".cache" if jobs > 1 and not plan_only else None)
    if cache.folder is not None:
        cache.folder.mkdir(parents=True, exist_ok=True)
    plan = make_plan(spec, root, pool, cache, overwrite)
    threads = default_threads(jobs) if jobs > 1 else None
    log(describe_plan(plan, spec, jobs, threads))
    if world > 1:
        log(f"sweep: {world} ranks: shared stages and cells are dealt round-robin, each rank runs its share alone")
    if plan_only:
        return root
    if rank != 0:
        return _run_rank(plan, rank, world, pool, root, log, show_progress, cache)
    root.mkdir(parents=True, exist_ok=True)
    raw = dict(spec.raw)
    raw["distill_seeds"] = spec.distill_seeds
    atomic_write_text(root / "sweep.yaml", f"# {spec.source}\n" + yaml.safe_dump(raw, sort_keys=False))
    for cell in spec.cells:
        for rep, d, e in plan.cells[cell.name]:
            _write_cell_record(plan, rep, d, e, cell)
    old = read_json(root / "sweep.json", "sweep record") if (root / "sweep.json").is_file() else {}
    record = {"name": spec.name, "source": spec.source, "baseline": spec.baseline, "jobs": jobs, "threads": threads,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "tasks": dict(old.get("tasks") or {}) if isinstance(old, dict) else {}}

    def note(t: Task) -> None:
        prev = record["tasks"].get(t.label)
        if t.outcome == "reused" and isinstance(prev, dict) and prev.get("outcome") != "reused":
            return  # keep what the run that made it recorded (its wall time)
        record["tasks"][t.label] = {"kind": t.kind, "folder": os.path.relpath(t.folder, root), "outcome": t.outcome,
                                    "seconds": round(t.seconds, 1),
                                    "reused_from": str(t.reuse_from) if t.reuse_from else None}
        atomic_write_json(root / "sweep.json", record)

    def adopt(t: Task) -> bool:
        """True if `t` needs no work: its folder is complete, or a matching one was copied from --reuse."""
        if t.kind == "eval":
            t.key = eval_key(t.config, plan.fingerprints[_rep_folder(plan, t)], t.distill)
            st = _folder_state(t.folder, "eval", t.key) if t.key else "missing"
            src = pool.get("eval", t.key)
            if st == "complete":
                t.outcome = "reused"
            elif src is not None and (st != "different" or t.overwrite):
                t.reuse_from = src
            else:
                return False  # run_eval resumes it (or refuses a different one, naming the folder)
        elif t.state == "complete":
            t.outcome = "reused"
        elif t.reuse_from is None:
            return False
        if t.reuse_from is not None:
            log(f"sweep: {t.label}: copying {t.reuse_from} (same stage and key)")
            copy_stage(t.reuse_from, t.folder)
            t.outcome = "copied"
        note(t)
        return True

    failed: list[str] = []
    if jobs == 1:
        mine = rank_share(plan, rank, world)
        for i, t in enumerate(plan.tasks):
            if id(t) not in mine:
                continue
            _wait_for_inputs(t, log)
            if adopt(t):
                continue
            log(f"sweep: [{i + 1}/{len(plan.tasks)}] {t.label}")
            t0 = time.perf_counter()
            run_task(t, cache.get(t.config), log, show_progress)
            t.seconds = time.perf_counter() - t0
            t.outcome = {"running": "resumed"}.get(t.state, "built") if t.kind != "eval" else "evaluated"
            note(t)
    else:
        data_files = {id(t): cache.file(t.config) for t in plan.tasks}
        cache.clear()  # each process reads the model-space tensors from the cache file
        failed = _run_parallel(plan, jobs, threads, adopt, note, log, data_files)
        if not failed:
            shutil.rmtree(root / ".cache", ignore_errors=True)
    if world > 1:  # the other ranks' cells
        from padistill.utils.distributed import wait_until

        evals = [t for t in plan.tasks if t.kind == "eval"]
        wait_until(lambda: all(_eval_complete(t) for t in evals), "the other ranks' cells", log)
        for r in range(1, world):
            other = root / f"sweep.rank{r}.json"
            if other.is_file():
                record["tasks"].update(read_json(other, "sweep record").get("tasks", {}))
    results = write_results(spec, plan, log=log)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(root / "sweep.json", record)
    if failed:
        raise PadistillError(f"sweep: {len(failed)} task(s) failed: {'; '.join(failed)}; the table holds the cells "
                             "that finished; run the same command again to resume")
    log(f"sweep: done in {record['seconds']:.0f}s -> {root / 'table.md'}")
    return results


def ranks() -> tuple[int, int]:
    """(rank, world size) under torchrun (from its environment; the sweep needs no process group), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _device_per_rank(spec: Spec) -> None:
    """Under torchrun with CUDA, `device: auto` means this rank's GPU (LOCAL_RANK), not GPU 0 for every rank."""
    import torch

    if not torch.cuda.is_available():
        return
    local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    for cell in spec.cells:
        for rep in cell.replicates:
            if rep.config.device.strip().lower() == "auto":
                rep.config.device = f"cuda:{local}"


def rank_share(plan: Plan, rank: int, world: int) -> set[int]:
    """ids of the tasks `rank` runs: shared stages round-robin, and each cell's distillation + evaluation together."""
    if world <= 1:
        return {id(t) for t in plan.tasks}
    shared = [t for t in plan.tasks if t.kind in ("scores", "experts")]
    cells = [t for t in plan.tasks if t.kind == "distill"]
    mine = {id(t) for j, t in enumerate(shared) if j % world == rank}
    for i, t in enumerate(cells):
        if i % world == rank:
            mine |= {id(t), id(t.follow)}
    return mine


def _wait_for_inputs(t: Task, log) -> None:
    """Block until the stages `t` reads are complete (made by another rank under torchrun; at once otherwise)."""
    from padistill.utils.distributed import wait_until

    for dep in t.deps:
        wait_until(lambda dep=dep: _folder_state(dep.folder, dep.kind, dep.key) == "complete",
                   f"{dep.folder} (another rank builds it)", log)


def _run_rank(plan: Plan, rank: int, world: int, pool: ReusePool, root: Path, log, show_progress: bool,
              cache: PreparedCache) -> Path:
    """A rank > 0 under torchrun: its share of the tasks; rank 0 writes the records and the table."""
    record: dict = {"rank": rank, "tasks": {}}
    from padistill.utils.distributed import wait_until

    wait_until(lambda: (root / "sweep.yaml").is_file(), f"{root} (rank 0 creates it)", log)
    for t in plan.tasks:
        if id(t) not in rank_share(plan, rank, world):
            continue
        _wait_for_inputs(t, log)
        if t.kind == "eval":
            t.key = eval_key(t.config, plan.fingerprints[_rep_folder(plan, t)], t.distill)
            if _folder_state(t.folder, "eval", t.key) == "complete":
                continue
            t.reuse_from = pool.get("eval", t.key)
        elif t.state == "complete":
            continue
        t0 = time.perf_counter()
        if t.reuse_from is not None:
            copy_stage(t.reuse_from, t.folder)
            t.outcome = "copied"
        else:
            run_task(t, cache.get(t.config), log, show_progress)
            t.outcome = "evaluated" if t.kind == "eval" else {"running": "resumed"}.get(t.state, "built")
        t.seconds = time.perf_counter() - t0
        record["tasks"][t.label] = {"kind": t.kind, "folder": os.path.relpath(t.folder, root), "outcome": t.outcome,
                                    "seconds": round(t.seconds, 1), "rank": rank,
                                    "reused_from": str(t.reuse_from) if t.reuse_from else None}
        atomic_write_json(root / f"sweep.rank{rank}.json", record)
    return root


def _rep_folder(plan: Plan, t: Task) -> str:
    return os.path.relpath(t.folder.parent, plan.root)


def _task_json(t: Task) -> dict:
    return {"kind": t.kind, "folder": str(t.folder), "scores": _s(t.scores), "experts": _s(t.experts),
            "distill": _s(t.distill), "overwrite": t.overwrite}


def _run_parallel(plan: Plan, jobs: int, threads: int, adopt, note, log, data_files: dict) -> list[str]:
    """Run tasks as separate processes, at most `jobs` at a time, each with `threads` CPU threads. A distillation
    and its cell's evaluation run in one process (the data are read once)."""
    logs = plan.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(plan.tasks)
    done: set[int] = set()
    bad: set[int] = set()
    running: dict[int, tuple[Task, subprocess.Popen, float, object]] = {}
    failed: list[str] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PADISTILL_THREADS=str(threads), PADISTILL_SWEEP_THREADS=str(threads))
    try:
        while pending or running:
            progressed = False
            for t in list(pending):
                if any(id(d) in bad for d in t.deps):
                    pending.remove(t)
                    bad.add(id(t))
                    t.outcome = "skipped"
                    note(t)
                    progressed = True
                    continue
                if not all(id(d) in done for d in t.deps):
                    continue
                if adopt(t):
                    pending.remove(t)
                    done.add(id(t))
                    progressed = True
                    continue
                if len(running) >= jobs:
                    continue
                pending.remove(t)
                group = [t]
                if t.follow is not None and t.follow in pending and t.follow.deps == [t]:
                    group.append(t.follow)  # the evaluation follows in the same process
                    pending.remove(t.follow)
                name = t.label.replace(" ", "-").replace("/", "_")
                task_file = logs / f"{name}.task.json"
                atomic_write_json(task_file, {"config": to_dict(t.config), "threads": threads,
                                              "model_space_cache": _s(data_files.get(id(t))),
                                              "tasks": [_task_json(g) for g in group]})
                fh = open(logs / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115 - closed when it ends
                proc = subprocess.Popen([sys.executable, "-m", "padistill.sweep.worker", str(task_file)],
                                        stdout=fh, stderr=subprocess.STDOUT, env=env)
                running[proc.pid] = (group, proc, time.perf_counter(), fh)
                what = " + ".join(g.label for g in group)
                log(f"sweep: started {what} (pid {proc.pid}, {threads} thread(s), log {logs / (name + '.log')})")
                progressed = True
            finished = [pid for pid, (_, p, _, _) in running.items() if p.poll() is not None]
            for pid in finished:
                group, p, t0, fh = running.pop(pid)
                fh.close()
                seconds = time.perf_counter() - t0
                what = " + ".join(g.label for g in group)
                last = _last_line(Path(fh.name))
                for g in group:
                    g.seconds = seconds / len(group)  # one process: the split is not measured
                    if p.returncode == 0:
                        done.add(id(g))
                        g.outcome = {"running": "resumed"}.get(g.state, "built") if g.kind != "eval" else "evaluated"
                    else:
                        bad.add(id(g))
                        g.outcome = "failed"
                    note(g)
                if p.returncode == 0:
                    log(f"sweep: finished {what} in {seconds:.0f}s")
                else:
                    failed.append(f"{what} (exit {p.returncode}: {last})")
                    log(f"sweep: {what} failed (exit {p.returncode}): {last}")
                progressed = True
            if not progressed:
                time.sleep(0.5)
    finally:
        for _g, p, _, _fh in running.values():  # interrupted: stop our own children, keep their resumable state
            p.terminate()
        for _g, p, _, fh in running.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            fh.close()
    return failed


def _s(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


# ------------------------------------------------------------------------------------------ results


def _row_accs(results: dict, row: str) -> dict[str, list[float]]:
    for r in results.get("table", {}).get("rows", []):
        if r.get("name") == row:
            return {net: [float(a) for a in res.get("accs", [])] for net, res in r.get("results", {}).items()}
    return {}


def collect(spec: Spec, plan: Plan) -> dict:
    """Per cell and net: the accuracies of every replicate's evaluation (from its eval/results.json)."""
    out: dict = {"nets": [], "cells": {}, "random": None}
    nets: list[str] = []
    for cell in spec.cells:
        reps = []
        for rep, _d, e in plan.cells[cell.name]:
            path = e.folder / "results.json"
            res = read_json(path, "evaluation results") if _eval_complete(e) else None
            accs = _row_accs(res, "distilled") if res else {}
            for n in accs:
                if n not in nets:
                    nets.append(n)
            reps.append({"folder": os.path.relpath(e.folder.parent, plan.root), "distill_seed": rep.config.distill.seed,
                         "accs": accs, "complete": res is not None})
            if res and cell.name == spec.baseline and rep.index == 0:
                rnd = _row_accs(res, "random")
                if rnd:
                    out["random"] = {"cell": cell.name, "accs": rnd}
        out["cells"][cell.name] = reps
    out["nets"] = nets
    return out


def write_results(spec: Spec, plan: Plan, log=print) -> Path:
    from padistill.sweep.stats import paired_difference, summarize

    data = collect(spec, plan)
    nets = data["nets"]
    base_reps = data["cells"].get(spec.baseline, [])
    rows = []
    for cell in spec.cells:
        reps = data["cells"][cell.name]
        entry = {"cell": cell.name, "overrides": cell.overrides, "values": cell.values,
                 "replicates": reps, "nets": {}}
        for net in nets:
            accs = [r["accs"][net] for r in reps if net in r["accs"]]
            if not accs:
                continue
            s = summarize(accs)
            if cell.name != spec.baseline:
                base = [r["accs"][net] for r in base_reps if net in r["accs"]]
                s["diff"] = paired_difference(accs, base) if base else None
            entry["nets"][net] = s
        rows.append(entry)
    random_row = None
    if data["random"]:
        random_row = {n: summarize([a]) for n, a in data["random"]["accs"].items()}
    results = {"sweep": spec.name, "source": spec.source, "baseline": spec.baseline,
               "distill_seeds": spec.distill_seeds, "grid": spec.grid_keys, "nets": nets, "cells": rows,
               "random": random_row, "std": "numpy default (ddof 0) over all runs of all distillations",
               "interval": ("95 % t-interval of the paired difference: over evaluation runs with one distillation "
                            "per cell (evaluation noise only), over distillation seeds with several")}
    atomic_write_json(plan.root / "results.json", results)
    atomic_write_text(plan.root / "table.md", render_markdown(results))
    atomic_write_text(plan.root / "table.csv", render_csv(results))
    log("sweep: results (top-1 test accuracy %)\n" + render_markdown(results, header=False).rstrip())
    from padistill.sweep.report import build_sweep_report

    log(f"sweep: report {build_sweep_report(plan.root)}")
    return plan.root


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}"


def _cell_text(s: dict | None) -> str:
    if not s:
        return "-"
    extra = f", seeds {s['seeds']}: seed std {100 * s['seed_std']:.2f}" if s.get("seeds", 1) > 1 else ""
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']}{extra})"


def _diff_text(d: dict | None) -> str:
    if not d:
        return "-"
    if d["n"] < 2:
        return f"{100 * d['mean']:+.2f} (n={d['n']}, no interval)" if d["n"] else "-"
    return f"{100 * d['mean']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}] (n={d['n']} {d['unit']})"


def render_markdown(results: dict, header: bool = True) -> str:
    nets = results["nets"]
    base = results["baseline"]
    cols = ["cell"] + [f"{n}" for n in nets] + [f"Δ vs {base} ({n}, 95 % CI)" for n in nets]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in results["cells"]:
        cells = [row["cell"] + (" (baseline)" if row["cell"] == base else "")]
        cells += [_cell_text(row["nets"].get(n)) for n in nets]
        cells += [("0 (baseline)" if row["cell"] == base else _diff_text((row["nets"].get(n) or {}).get("diff")))
                  for n in nets]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if results.get("random"):
        cells = ["random real"] + [_cell_text(results["random"].get(n)) for n in nets] + ["" for _ in nets]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    if not header:
        return table
    return (f"# Sweep {results['sweep']}\n\nSource: `{results['source']}`. Top-1 test accuracy (%), mean ± std "
            f"(numpy, ddof 0) over n evaluation runs"
            + (f" of {results['distill_seeds']} distillations" if results["distill_seeds"] > 1 else "")
            + f". Every cell is evaluated with the same network initialisations and data orders (paired); "
            f"Δ is the mean paired difference against '{base}' with its {results['interval']}.\n\n" + table)


def render_csv(results: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cell", "net", "mean", "std", "n", "seeds", "seed_std", "diff_mean", "diff_lo", "diff_hi",
                "diff_n", "diff_unit"])
    for row in results["cells"]:
        for net, s in row["nets"].items():
            d = s.get("diff") or {}
            w.writerow([row["cell"], net, s["mean"], s["std"], s["n"], s.get("seeds", 1), s.get("seed_std", ""),
                        d.get("mean", ""), d.get("lo", ""), d.get("hi", ""), d.get("n", ""), d.get("unit", "") or ""])
    if results.get("random"):
        for net, s in results["random"].items():
            w.writerow(["random real", net, s["mean"], s["std"], s["n"], 1, "", "", "", "", "", ""])
    return buf.getvalue()
