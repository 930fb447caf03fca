"""`padistill` command line: one sub-command per stage, plus `run` that chains them.

    padistill list {nets,datasets,presets}
    padistill config --preset pad/cifar10-ipc10 [--set distill.ipc=1]      print a resolved config
    padistill scores   --preset P --out DIR                                 difficulty scores + ordering
    padistill experts  --preset P --scores DIR --out DIR                    scheduled expert trajectories
    padistill distill  --preset P --experts DIR --out DIR                   synthetic set (TM / DC / DM)
    padistill eval     RUN_DIR                                              protocol, cross-arch, baseline
    padistill report   RUN_DIR                                              HTML page
    padistill squeeze  --preset P [--scores DIR] --out DIR                  SRe2L teacher
    padistill recover  --preset P --squeeze DIR --out DIR                   SRe2L images (eval --protocol sre2l)
    padistill run      CONFIG --out DIR                                     all of the above, resumable
    padistill train    --preset P                                           train + test one net on real data
    padistill sweep    SPEC.yaml | --preset NAME [--jobs N] [--reuse DIR]   ablation: cells, shared stages, table
    padistill select   --preset P --method M --out DIR                      coreset baseline as a set folder

Every error a user can cause prints one line (`padistill: error: ...`) and exits with status 2.
Under `torchrun` the process group is initialised here (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from padistill.errors import PadistillError


def _add_config_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("config", help="YAML config file or preset name (see `padistill list presets`)")
    else:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--preset", help="preset name (see `padistill list presets`)")
        g.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set distill.ipc=1 (repeatable)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's, usually auto)")
    p.add_argument("--data-root", help="dataset folder (default: $PADISTILL_DATA or ~/.cache/padistill/data)")
    p.add_argument("--download", action="store_true",
                   help="fetch the dataset's official archive if it is missing (checksum verified; "
                        "= --set data.download=true)")
    p.add_argument("--seed", type=int, help="override the config seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads_arg(p)


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of this process (default: $PADISTILL_THREADS, else $OMP_NUM_THREADS, else the "
                        "CPUs its affinity mask and cgroup quota allow)")


# commands that only read or copy files: no thread policy, no start-up line
_LIGHT_COMMANDS = {"list", "config", "report", "export", "import", "buffers"}


def _resolve(args) -> Config:  # noqa: F821
    from padistill.config import load_config

    preset = getattr(args, "preset", None)
    path = getattr(args, "config", None)
    if preset is None and path is None:
        preset = getattr(args, "default_preset", None)
    return load_config(preset=preset, path=path, overrides=_cli_overrides(args))


def _log(msg: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(msg, flush=True)


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("PADISTILL_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)


# ------------------------------------------------------------------------------------------ commands


def cmd_list(args) -> int:
    if args.what == "nets":
        from padistill.nets import list_nets

        items = list_nets()
    elif args.what == "datasets":
        from padistill.data import list_datasets

        items = list_datasets()
    else:
        from padistill.config import list_presets, preset_header

        for name in list_presets():
            header = preset_header(name).splitlines()
            print(f"{name:28s} {header[0] if header else ''}")
        return 0
    print("\n".join(items))
    return 0


def cmd_config(args) -> int:
    from padistill.config import dump_yaml

    print(dump_yaml(_resolve(args)), end="")
    return 0


def cmd_scores(args) -> int:
    from padistill.context import prepare
    from padistill.scores import run_scores

    cfg = _resolve(args)
    _init_distributed()  # under torchrun each rank trains its share of the scoring models
    run_scores(cfg, prepare(cfg, log=_log), args.out, overwrite=args.overwrite, log=_log,
               show_progress=not args.quiet)
    return 0


def cmd_experts(args) -> int:
    from padistill.context import prepare
    from padistill.experts import run_experts

    cfg = _resolve(args)
    _init_distributed()
    run_experts(cfg, prepare(cfg, log=_log), args.out, scores_dir=args.scores, overwrite=args.overwrite, log=_log,
                show_progress=not args.quiet)
    return 0


def cmd_distill(args) -> int:
    from padistill.context import prepare
    from padistill.distill import run_distill

    cfg = _resolve(args)
    _init_distributed()
    run_distill(cfg, prepare(cfg, log=_log), args.out, experts_dir=args.experts, scores_dir=args.scores,
                overwrite=args.overwrite, log=_log, show_progress=not args.quiet)
    return 0


def cmd_squeeze(args) -> int:
    from padistill.context import prepare
    from padistill.sre2l import run_squeeze

    cfg = _resolve(args)
    run_squeeze(cfg, prepare(cfg, log=_log), args.out, scores_dir=args.scores, overwrite=args.overwrite, log=_log,
                show_progress=not args.quiet)
    return 0


def cmd_recover(args) -> int:
    from padistill.context import prepare
    from padistill.sre2l import run_recover

    cfg = _resolve(args)
    run_recover(cfg, prepare(cfg, log=_log), args.out, args.squeeze, scores_dir=args.scores,
                overwrite=args.overwrite, log=_log, show_progress=not args.quiet)
def cmd_select(args) -> int:
    from padistill.context import prepare
    from padistill.select import run_select

    if args.method:
        args.overrides.append(f"select.method={args.method}")
    if args.ipc is not None:  # replaces a preset's ratio budget
        args.overrides += [f"select.ipc={args.ipc}", "select.ratio=null"]
    if args.ratio is not None:
        if not 0.0 < args.ratio <= 1.0:
            raise PadistillError(f"--ratio must be in (0, 1] (a fraction of each class); got {args.ratio:g}")
        args.overrides += [f"select.ratio={args.ratio!r}", "select.ipc=null"]
    if args.score:
        args.overrides.append(f"select.score={args.score}")
    cfg = _resolve(args)
    run_select(cfg, prepare(cfg, log=_log), args.out, embed_dir=args.embed, scores_dir=args.scores,
               overwrite=args.overwrite, log=_log, show_progress=not args.quiet)
    return 0


def cmd_train(args) -> int:
    from padistill.context import prepare
    from padistill.evaluate import train_on_real

    if args.per_class is not None and args.per_class < 1:
        raise PadistillError(f"--per-class must be >= 1 (leave it out to train on all images); got {args.per_class}")
    if args.epochs is not None and args.epochs < 0:
        raise PadistillError(f"--epochs must be >= 0; got {args.epochs}")
    cfg = _resolve(args)
    res = train_on_real(prepare(cfg, log=_log), cfg, per_class=args.per_class, epochs=args.epochs, log=_log,
                        show_progress=not args.quiet)
    print(res.summary())
    return 0


def cmd_eval(args) -> int:
    from padistill.evaluate import run_eval

    if args.protocol:
        args.overrides.append(f"eval.protocol={args.protocol}")
    run_eval(args.run_dir, overrides=args.overrides, nets=args.nets, runs=args.runs, epochs=args.epochs,
             device=args.device, data_root=args.data_root, baseline=False if args.no_baseline else None, out=args.out,
             log=_log, show_progress=not args.quiet)
    return 0


def cmd_report(args) -> int:
    from padistill.report import build_report

    path = build_report(args.run_dir, out=args.out)
    print(path)
    return 0


def cmd_run(args) -> int:
    from padistill.pipeline import run_pipeline

    _init_distributed()
    run_pipeline(args.config, out=args.out, overrides=_cli_overrides(args), stages=args.stages,
                 overwrite=args.overwrite, log=_log, show_progress=not args.quiet)
    return 0


def cmd_sweep(args) -> int:
    from padistill.sweep import list_sweep_presets, load_spec, run_sweep

    if args.list:
        from padistill.sweep.spec import sweep_preset_header, sweep_preset_path

        for name in list_sweep_presets():
            header = sweep_preset_header(sweep_preset_path(name)).splitlines()
            print(f"{name:28s} {header[0] if header else ''}")
        return 0
    if (args.spec is None) == (args.preset is None):
        raise PadistillError("sweep: give a spec file or --preset NAME (`padistill sweep --list` lists the presets)")
    spec = load_spec(args.spec, preset=args.preset, cli_overrides=_cli_overrides(args),
                     distill_seeds=args.distill_seeds)
    run_sweep(spec, out=args.out, reuse=args.reuse, jobs=args.jobs, overwrite=args.overwrite, plan_only=args.plan,
              log=_log, show_progress=not args.quiet)
    return 0


def _cli_overrides(args) -> list[str]:
    o = list(args.overrides)
    if getattr(args, "device", None):
        o.append(f"device={args.device}")
    if getattr(args, "data_root", None):
        o.append(f"data.root={args.data_root}")
    if getattr(args, "download", False):
        o.append("data.download=true")
    if getattr(args, "seed", None) is not None:
        o.append(f"seed={args.seed}")
    return o


def cmd_buffers(args) -> int:
    from padistill.experts.interop import export_replay_buffers, import_replay_buffers

    if args.direction == "import":
        import_replay_buffers(args.src, args.out, net=args.net, num_classes=args.num_classes,
                              channels=args.channels, im_size=args.im_size, overwrite=args.overwrite, log=_log)
    else:
        export_replay_buffers(args.src, args.out, per_file=args.per_file, log=_log)
    return 0


def cmd_export(args) -> int:
    from padistill.export import export_set

    if args.push_to_hub and args.format != "hf":
        raise PadistillError("--push-to-hub uploads a Hugging Face dataset; use it with --format hf")
    out = export_set(args.run_dir, args.out, fmt=args.format, space=args.space, log=_log,
                     prefix="best_" if args.best else "", repo_id=args.push_to_hub)
    if args.push_to_hub:
        from padistill.hub import push_to_hub

        push_to_hub(out, args.push_to_hub, private=args.private, log=_log)
    return 0


def cmd_import(args) -> int:
    from padistill.export import import_set

    import_set(args.src, args.out, fmt=args.format, space=args.space, dataset=args.dataset,
               data_root=args.data_root, lr=args.lr, log=_log, preprocess=args.preprocess, overwrite=args.overwrite)
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from padistill import __version__

    ap = argparse.ArgumentParser(prog="padistill", description="Dataset distillation with prioritized alignment.")
    ap.add_argument("--version", action="version", version=f"padistill {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered nets, datasets or presets")
    p.add_argument("what", choices=["nets", "datasets", "presets"])
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("config", help="print the resolved config")
    _add_config_args(p)
    p.set_defaults(fn=cmd_config)

    for name, fn, helptext in (("scores", cmd_scores, "difficulty scores and per-class ordering"),
                               ("experts", cmd_experts, "train scheduled expert trajectories"),
                               ("distill", cmd_distill, "distill a synthetic set")):
        p = sub.add_parser(name, help=helptext)
        _add_config_args(p)
        p.add_argument("--out", required=True, help="output folder of this stage")
        p.add_argument("--overwrite", action="store_true", help="replace a folder that holds a different run")
        if name in ("experts", "distill"):
            p.add_argument("--scores", help="scores folder (difficulty ordering: expert scheduler / DC-DM pruning)")
        if name == "distill":
            p.add_argument("--experts", help="experts folder (trajectory matching)")
        p.set_defaults(fn=fn)

    for name, fn, helptext in (("squeeze", cmd_squeeze, "SRe2L: train the batch-norm teacher"),
                               ("recover", cmd_recover, "SRe2L: recover images from a squeezed teacher")):
        p = sub.add_parser(name, help=helptext)
        _add_config_args(p)
        p.add_argument("--out", required=True, help="output folder of this stage")
        p.add_argument("--overwrite", action="store_true", help="replace a folder that holds a different run")
        p.add_argument("--scores", help="scores folder (FIEX teacher; recover with sre2l.bn_stats=subset)")
        if name == "recover":
            p.add_argument("--squeeze", required=True, help="squeeze folder (the teacher)")
        p.set_defaults(fn=fn)

    p = sub.add_parser("train", help="train and test a network on (a subset of) the real data")
    _add_config_args(p)
    p.add_argument("--per-class", type=int, default=None, help="random real images per class (default: all)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs E (default: eval.epochs); as in the reference protocol, epochs 0..E are run")
    p.set_defaults(fn=cmd_train, default_preset="quickstart")

    p = sub.add_parser("select", help="coreset baseline (random, herding, kcenter, forgetting, glister, easy, hard, "
                                      "middle, full) written as a set folder")
    _add_config_args(p)
    p.add_argument("--method", help="= --set select.method=M")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ipc", type=int, help="images per class (= --set select.ipc=K; default distill.ipc)")
    budget.add_argument("--ratio", type=float, help="fraction of each class in (0, 1] (= --set select.ratio=F)")
    p.add_argument("--score", help="easy / hard / middle: el2n, grand, uncertainty or loss (= --set select.score=S)")
    p.add_argument("--out", required=True, help="the set folder to write")
    p.add_argument("--embed", help="selection-net folder (default: OUT/../embed; trained there when missing)")
    p.add_argument("--scores", help="scores folder for easy/hard/middle (default: OUT/../scores; computed if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that holds a different run")
    p.set_defaults(fn=cmd_select)

    p = sub.add_parser("eval", help="evaluate a distilled set with the paper's protocol")
    p.add_argument("run_dir", help="distill folder, or a run folder containing distill/")
    p.add_argument("--nets", nargs="+", help="architectures (default: the config's eval.nets)")
    p.add_argument("--runs", type=int, help="fresh networks per architecture")
    p.add_argument("--epochs", type=int,
                   help="training epochs E per network; as in the reference protocol, epochs 0..E are run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device")
    p.add_argument("--data-root")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-real-subset baseline")
    p.add_argument("--protocol", choices=["tm", "sre2l"],
                   help="tm (the paper's) or sre2l (teacher relabel; = --set eval.protocol=...)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/../eval or RUN_DIR/eval)")
    p.add_argument("--quiet", action="store_true")
    _add_threads_arg(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("run", help="scores -> experts -> distill -> eval -> report, each stage reused/resumed")
    _add_config_args(p, positional=True)
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--stages", nargs="+", choices=["scores", "experts", "distill", "eval", "report", "squeeze",
                                                   "recover"],
                   help="run only these stages (their inputs must exist)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="run an ablation: cells of --set overrides, shared stages, paired table")
    p.add_argument("spec", nargs="?", help="sweep spec YAML (base, set, cells or grid, baseline)")
    p.add_argument("--preset", help="a shipped sweep spec (see `padistill sweep --list`)")
    p.add_argument("--list", action="store_true", help="list the shipped sweep specs")
    p.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="copy complete stage folders found under DIR whose stage key matches (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="run tasks as N separate processes (cores // N threads each)")
    p.add_argument("--distill-seeds", type=int, help="distillations per cell (overrides the spec's distill_seeds)")
    p.add_argument("--plan", action="store_true", help="print the plan (stages built / reused, work) and stop")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every cell (before the cells' own overrides)")
    p.add_argument("--device")
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true")
    p.add_argument("--seed", type=int, help="the run seed of every cell")
    p.add_argument("--overwrite", action="store_true", help="redo cells whose settings changed")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("buffers", help="import/export MTT/DATM/PAD replay_buffer_<n>.pt files")
    p.add_argument("direction", choices=["import", "export"])
    p.add_argument("src", help="import: folder with replay_buffer_*.pt; export: experts folder")
    p.add_argument("out", help="import: experts folder to create; export: folder for replay_buffer_*.pt")
    p.add_argument("--net", default="convnet", help="network the buffers were trained with (import)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--im-size", type=int, default=32)
    p.add_argument("--per-file", type=int, default=10, help="trajectories per replay_buffer file (export)")
    p.add_argument("--overwrite", action="store_true", help="import: replace a folder that holds another run")
    p.set_defaults(fn=cmd_buffers)

    p = sub.add_parser("export", help="export a distilled set (DD-Ranking tensors, an ImageFolder of PNGs, or a "
                                      "Hugging Face dataset)")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--format", choices=["ddranking", "imagefolder", "hf"], default="ddranking")
    p.add_argument("--space", choices=["model", "pixel"], default=None,
                   help="model (ddranking default): the ZCA/normalised space it was distilled in; "
                        "pixel (imagefolder, always): de-whitened [0,1]; hf: model (default) = PNGs + exact "
                        "model-space tensors, pixel = PNGs only")
    p.add_argument("--best", action="store_true", help="export best_*.pt (the set selected on validation)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="hf: also upload the folder to this Hugging Face "
                   "dataset repo (needs huggingface_hub and a login; the local folder stays either way)")
    p.add_argument("--private", action="store_true", help="hf: create the Hub repo as private")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import", help="import a distilled set (DD-Ranking tensors / MTT-DATM-PAD files / PNGs / a "
                                      "Hugging Face dataset folder)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--format", choices=["ddranking", "imagefolder", "hf"], default="ddranking")
    p.add_argument("--space", choices=["zca", "normalize", "pixel"], required=True,
                   help="the space the imported images are in")
    p.add_argument("--dataset", required=True, help="dataset the set was distilled from (for its transform)")
    p.add_argument("--data-root")
    p.add_argument("--lr", type=float, help="student lr when the source has no lr.pt")
    p.add_argument("--preprocess", choices=["zca", "normalize", "none"],
                   help="model space that pixel images are converted into (default: zca)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that holds another import")
    p.set_defaults(fn=cmd_import)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in _LIGHT_COMMANDS:
            from padistill.utils.threads import apply_threads

            apply_threads(getattr(args, "threads", None), log=_log)
        return int(args.fn(args) or 0)
    except PadistillError as e:
        print(f"padistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("padistill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `padistill list presets | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a path problem not caught closer to the source: --out names a file, no permission, ...
        if e.filename is None and e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{Path(e.filename)}: " if e.filename is not None else ""
        what = e.strerror
        if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
            # name the file that stands where a folder should be (the path itself or one of its parents)
            blocker = next((q for q in (Path(e.filename), *Path(e.filename).parents) if q.is_file()), None)
            if blocker is not None:
                where, what = f"{blocker}: ", "is a file; expected a folder (or a path that does not exist yet)"
        print(f"padistill: error: {where}{what}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
