"""`padistill run CONFIG`: scores -> experts -> distill -> eval -> report in one resumable command.

Input: a config file or preset name (+ overrides). Output: one run folder
    <out>/scores  <out>/experts  <out>/distill  <out>/eval  <out>/report
Each stage writes its own manifest; a stage whose folder is complete with the same settings and
inputs is reused (nothing recomputed), one that was interrupted resumes, and one whose settings or
inputs changed is refused unless --overwrite is given (nothing silently stale). Stages a method does
not need are skipped: no scores when neither the expert scheduler nor DC/DM pruning uses an ordering,
no experts for DC/DM. SRe2L (`distill.method: sre2l`): scores (FIEX only) -> squeeze -> recover -> eval
(`eval.protocol: sre2l`) -> report, in <out>/squeeze and <out>/recover instead of experts/ and distill/.
"""

from __future__ import annotations

import time
from pathlib import Path

from padistill.config import load_config
from padistill.context import prepare
from padistill.errors import PadistillError

STAGES = ("scores", "experts", "distill", "eval", "report", "squeeze", "recover")


def needs_scores(cfg) -> bool:
    if cfg.distill.method == "sre2l":  # FIEX teacher (the experts' scheduler) or BN targets on the kept subset
        return cfg.experts.schedule.enabled or cfg.sre2l.bn_stats == "subset"
    if cfg.distill.method == "tm":
        from padistill.experts.train import uses_scores

        return uses_scores(cfg)
    return cfg.distill.prune.mode != "none" and cfg.distill.prune.ratio > 0


def run_pipeline(config: str, out: str | None = None, overrides=(), stages=None, overwrite: bool = False,
                 log=print, show_progress: bool = True) -> Path:
    cfg = load_config(path=config, overrides=list(overrides))
    root = Path(out) if out else Path("runs") / cfg.name
    wanted = set(stages or STAGES)
    t0 = time.perf_counter()
    log(f"run: {cfg.name} -> {root}")
    prepared = prepare(cfg, log=log)
    timings: dict[str, float] = {}

    def timed(stage, fn):
        t = time.perf_counter()
        result = fn()
        timings[stage] = time.perf_counter() - t
        log(f"run: {stage} finished in {timings[stage]:.1f}s")
        return result

    scores_dir = root / "scores" if needs_scores(cfg) else None
    if scores_dir is not None and "scores" in wanted:
        from padistill.scores import run_scores

        timed("scores", lambda: run_scores(cfg, prepared, scores_dir, overwrite=overwrite, log=log,
                                           show_progress=show_progress))
    experts_dir = root / "experts" if cfg.distill.method == "tm" else None
    if experts_dir is not None and "experts" in wanted:
        from padistill.experts import run_experts

        timed("experts", lambda: run_experts(cfg, prepared, experts_dir, scores_dir=scores_dir, overwrite=overwrite,
                                             log=log, show_progress=show_progress))
    distill_dir = root / "distill"
    if cfg.distill.method == "sre2l":  # squeeze -> recover (sre2l/); the recover folder is the set
        from padistill.sre2l import run_recover, run_squeeze

        distill_dir = root / "recover"
        if wanted & {"squeeze", "distill"}:
            timed("squeeze", lambda: run_squeeze(cfg, prepared, root / "squeeze", scores_dir=scores_dir,
                                                 overwrite=overwrite, log=log, show_progress=show_progress))
        if wanted & {"recover", "distill"}:
            timed("recover", lambda: run_recover(cfg, prepared, distill_dir, root / "squeeze", scores_dir=scores_dir,
                                                 overwrite=overwrite, log=log, show_progress=show_progress))
    elif "distill" in wanted:
        from padistill.distill import run_distill

        timed("distill", lambda: run_distill(cfg, prepared, distill_dir, experts_dir=experts_dir,
                                             scores_dir=scores_dir, overwrite=overwrite, log=log,
                                             show_progress=show_progress))
    if "eval" in wanted:
        if not (distill_dir / "images.pt").is_file():
            raise PadistillError(f"{distill_dir}: no distilled set yet; run the distill stage first")
        from padistill.evaluate import run_eval

        timed("eval", lambda: run_eval(distill_dir, out=root / "eval", prepared=prepared, log=log,
                                       show_progress=show_progress, overwrite=overwrite))
    if "report" in wanted:
        from padistill.report import build_report

        page = timed("report", lambda: build_report(root, out=root / "report"))
        log(f"run: report {page}")
    log(f"run: done in {time.perf_counter() - t0:.1f}s ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
    return root
