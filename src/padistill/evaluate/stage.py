"""`padistill eval RUN_DIR`: the evaluation stage (spec §4; paper Tables 1, 2, 3a, 9).

Input: a distill folder (images.pt, labels.pt, lr.pt, preprocess.pt, config.yaml, manifest.json — or an
imported set in the same format) or a run folder containing `distill/`.
Output: an `eval/` folder (default: beside the distill folder) with
    manifest.json, config.yaml   stage manifest (reused when settings and inputs match; resumed per run)
    results.json                 every run's accuracy, mean / std / n per cell, improvements, settings
    table.md                     the table (rows: distilled [, best on validation], random baseline
                                 [, KD rows]; columns: eval.nets) with the protocol stated under it
    partial.json                 accuracies finished so far (an interrupted evaluation resumes here; removed
                                 when the evaluation completes)

The data are re-prepared from the set's own config, and the set's `preprocess.pt` must equal the
transform the data were prepared with (`check_space`): a ZCA set can never be tested on normalised
data or with another dataset's ZCA. The test split is used once per network, at the end of training.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

from padistill.artifacts import check_set_folder, find_distill_dir, read_set_config
from padistill.config import apply_overrides, dump_yaml, to_dict
from padistill.errors import PadistillError
from padistill.evaluate.api import cross_arch
from padistill.evaluate.protocol import Protocol
from padistill.evaluate.sets import BASELINE_LR, EvalSet, check_space, load_teacher, random_subset
from padistill.utils.allocator import tune_cpu_allocator
from padistill.utils.io import atomic_write_json, atomic_write_text, read_json, sha256_file
from padistill.utils.manifest import StageDir


def _file_hashes(folder: Path, names) -> dict:
    return {n: sha256_file(folder / n) for n in names if (folder / n).is_file()}


def full_data_note(cfg, n: int) -> str:
    """What the evaluation protocol means for the whole training split (the full-data bound)."""
    e = cfg.eval
    steps = (e.epochs + 1) * math.ceil(n / e.batch)
    return (f"full-data bound: the protocol trains {e.epochs + 1} epochs (eval.epochs={e.epochs}, lr x0.1 after "
            f"epoch {e.epochs // 2 + 1}) over all {n} images, {steps} SGD steps of batch {e.batch} per network; "
            "`padistill eval --epochs E` sets another E for this bound")


def eval_settings(ec) -> dict:
    """The evaluation settings hashed into the eval stage's key (speed-only fields left out; the protocol field only
    when it is not the paper's, so the keys of existing tm evaluations stay what they were). The sweep predicts
    eval keys with it."""
    settings = {"eval": {k: v for k, v in to_dict(ec).items() if k not in ("microbatch", "test_batch")}}
    if ec.protocol == "tm":
        settings["eval"].pop("protocol")
    return settings


def run_eval(run_dir: str | Path, overrides=(), nets=None, runs: int | None = None, epochs: int | None = None,
             device: str | None = None, data_root: str | None = None, baseline: bool | None = None,
             out: str | Path | None = None, log=print, show_progress: bool = True, prepared=None,
             overwrite: bool = False) -> Path:
    """Evaluate a distilled set (and best_*.pt, the random baseline, KD rows) on eval.nets; returns the
    eval folder. `prepared`: data already prepared with the run's config (the pipeline)."""
    from padistill.artifacts import load_distilled
    from padistill.context import prepare

    t0 = time.perf_counter()
    folder = find_distill_dir(run_dir)
    manifest = check_set_folder(folder)
    cfg = copy.deepcopy(prepared.config) if prepared is not None else read_set_config(folder)
    extra = list(overrides or ())
    if nets:
        extra.append("eval.nets=[" + ", ".join(nets) + "]")
    if runs is not None:
        extra.append(f"eval.runs={int(runs)}")
    if epochs is not None:
        extra.append(f"eval.epochs={int(epochs)}")
    if device:
        extra.append(f"device={device}")
    if data_root:
        extra.append(f"data.root={data_root}")
    if baseline is not None:
        extra.append(f"eval.baseline={'true' if baseline else 'false'}")
    cfg = apply_overrides(cfg, extra)
    if prepared is None:
        prepared = prepare(cfg, log=log)
    syn = load_distilled(folder, num_classes=prepared.num_classes)
    check_space(syn.pre, prepared.pre, str(folder / "preprocess.pt"))
    if tuple(syn.images.shape[1:]) != (prepared.channels, *prepared.image_size):
        raise PadistillError(f"{folder / 'images.pt'}: images {list(syn.images.shape[1:])} do not match the "
                             f"data ({prepared.channels}x{prepared.image_size[0]}x{prepared.image_size[1]})")
    ec = cfg.eval
    syn_lr = ec.lr if ec.lr is not None else float(syn.lr)
    base_lr = ec.lr if ec.lr is not None else BASELINE_LR
    dev = prepared.device
    if dev.type == "cpu":
        tune_cpu_allocator()  # as the other stages do (utils/allocator.py)
    label_kind = "soft" if syn.labels.is_floating_point() and ec.soft_labels else "hard"
    sets = [EvalSet("distilled", syn.images.to(dev), syn.labels.to(dev), syn_lr,
                    f"the distilled set ({syn.ipc} per class, {label_kind} labels, lr {syn_lr:.4g})",
                    baseline="random" if ec.baseline else None)]
    if manifest["stage"] == "select":  # a coreset baseline (padistill select): named by its method
        sets[0].name = f"{manifest.get('method')} (real subset)"
        sets[0].description = (f"{syn.ipc} real training image(s) per class chosen by `padistill select --method "
                               f"{manifest.get('method')}`, hard labels, lr {syn_lr:.4g}")
        if manifest.get("method") == "full":
            log("eval: " + full_data_note(cfg, syn.images.shape[0]))
    hashed = ["images.pt", "labels.pt", "lr.pt", "preprocess.pt"]
    if (folder / "best_images.pt").is_file():
        best = load_distilled(folder, num_classes=prepared.num_classes, prefix="best_")
        info = manifest.get("best") or {}
        at = f" at iteration {info['iteration']}" if "iteration" in info else ""
        best_lr = ec.lr if ec.lr is not None else float(best.lr)
        sets.append(EvalSet("distilled (best on val)", best.images.to(dev), best.labels.to(dev), best_lr,
                            f"the set with the best validation accuracy{at} (selected on the held-out "
                            "validation split, never the test set)", baseline="random" if ec.baseline else None))
        hashed += ["best_images.pt", "best_labels.pt", "best_lr.pt"]
    teacher = load_teacher(ec.kd_teacher, prepared, cfg, folder) if ec.kd_teacher and ec.protocol == "tm" else None
    if ec.protocol == "sre2l":  # SRe2L relabel protocol: its own rows (evaluate/sre2l.py)
        from padistill.evaluate.sre2l import relabel_sets

        sets, teacher_info = relabel_sets(folder, syn, prepared, cfg, log=log)
        hashed = ["images.pt", "labels.pt", "preprocess.pt"]
    elif ec.baseline:
        xr, yr = random_subset(prepared.x_train, prepared.y_train, prepared.num_classes, syn.ipc, cfg.seed)
        sets.append(EvalSet("random", xr, yr, base_lr,
                            f"{syn.ipc} random real training image(s) per class, hard labels, lr {base_lr:g}"))
        if teacher is not None:
            soft = teacher(xr)
            sets.append(EvalSet("random + teacher labels", xr, soft, base_lr,
                                "the random images with the teacher's logits as soft labels (soft CE)"))
    if teacher is not None:
        sets.append(EvalSet("distilled + KD", sets[0].images, sets[0].labels, syn_lr,
                            f"the distilled set, student matching the teacher ({teacher.name}) with "
                            f"KL at T={ec.kd_temperature:g} (RDED-style)",
                            baseline="random + KD" if ec.baseline else None, teacher=teacher))
        if ec.baseline:
            sets.append(EvalSet("random + KD", xr, yr, base_lr, "the random images, same KD training",
                                teacher=teacher))

    if out is None:  # a select folder is its own run: siblings (other methods) must not share one eval/
        out = folder / "eval" if manifest["stage"] == "select" else folder.parent / "eval"
    out = Path(out)
    protocol = Protocol.from_config(ec, sre2l=cfg.sre2l)
    settings = eval_settings(ec)
    inputs = {"data": prepared.fingerprint(), "set": _file_hashes(folder, hashed)}
    if teacher is not None:
        inputs["teacher"] = teacher.name
    if ec.protocol != "tm":
        settings["relabel"] = protocol.relabel.settings()
        settings["ipc"] = cfg.distill.ipc
        inputs["teacher"] = teacher_info["key"]
    stage = StageDir(out, "eval", settings, inputs, cfg.seed, dump_yaml(cfg))
    state = stage.begin(overwrite=overwrite)
    if state == "complete":
        log(f"eval: {out} is complete (same settings and inputs); reusing it")
        return out
    partial_path = out / "partial.json"
    partial: dict = read_json(partial_path, "partial results") if state == "running" and partial_path.is_file() else {}

    def on_run(row, net, run, acc):
        partial.setdefault(row, {}).setdefault(net, {})[str(run)] = acc
        atomic_write_json(partial_path, partial)

    log(f"eval: {folder} ({syn.images.shape[0]} images, {syn.num_classes} classes) on {', '.join(ec.nets)}: "
        f"{ec.runs} run(s) x {protocol.epochs + (protocol.relabel is None)} epochs, test split "
        f"{len(prepared.y_test)} images")
    table = cross_arch(sets, ec.nets, prepared, cfg, split="test", skip=partial, on_run=on_run, log=log,
                       show_progress=show_progress)
    seconds = time.perf_counter() - t0
    results = {"table": table.to_dict(), "protocol": protocol.settings(), "runs": ec.runs, "seed": cfg.seed,
               "set": {"folder": str(folder), "ipc": syn.ipc, "num_classes": syn.num_classes,
                       "lr": float(syn.lr), "labels": label_kind, "kd_teacher": ec.kd_teacher},
               "data": {"name": prepared.dataset.name, "preprocess": prepared.pre.kind,
                        "test_images": len(prepared.y_test), "fingerprint": prepared.fingerprint()},
               "speed": {"microbatch": ec.microbatch, "test_batch": ec.test_batch, "device": str(dev)},
               "seconds": round(seconds, 1)}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", render_markdown(table, results))
    stage.complete(["results.json", "table.md"], seconds=round(seconds, 1))
    partial_path.unlink(missing_ok=True)  # results.json holds every run now
    log("eval: results (top-1 test accuracy %, mean ± std over n fresh networks)\n" + table.to_text().rstrip())
    log(f"eval: wrote {out} in {seconds:.0f}s")
    return out


def render_markdown(table, results: dict) -> str:
    p = results["protocol"]
    kd = f", KD temperature {p['kd_temperature']:g}" if results["set"].get("kd_teacher") else ""
    if p.get("relabel"):  # the SRe2L protocol
        from padistill.evaluate.sre2l import describe

        proto = describe(p)
    else:
        proto = (f"{p['epochs'] + 1} epochs, SGD momentum {p['momentum']:g}, weight decay "
                 f"{p['weight_decay']:g}, batch {p['batch']}, lr x0.1 (new optimiser) after epoch "
                 f"{p['epochs'] // 2 + 1}, DSA {'on' if p['augment'] else 'off'}, "
                 f"{'soft' if p['soft_labels'] else 'hard'}-label cross-entropy{kd}")
    return (f"# Evaluation: {results['set']['folder']}\n\n"
            "Top-1 accuracy (%) on the full test split "
            f"({results['data']['test_images']} images of {results['data']['name']}, "
            f"{results['data']['preprocess']} space), mean ± std over n fresh networks (numpy std, ddof 0).\n\n"
            + table.to_markdown() + "\n" + table.legend() + "\n"
            f"Protocol: {proto}; seed {results['seed']}.\n")
