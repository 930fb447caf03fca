"""Coreset baselines on real CIFAR-10 (issue 17, README "Coreset baselines"): every `padistill select` method at the
given IPCs, each evaluated with the paper's protocol, the data prepared ONCE for all of them.

    python -m benchmarks.coresets --data-root ../shared/data --out runs/coresets [--ipc 10 50] [--methods ...]

is the same as, per IPC K and method M (each command below prepares the data again: ~2.5 min of ZCA on 60,000
images per command on one CPU thread, which is why the table was made this way):

    padistill select --preset cpu/coreset-cifar10-ipcK --data-root ../shared/data --method M --out OUT/ipcK/M \\
        --embed OUT/ipc10/embed --scores OUT/ipc10/scores
    padistill eval OUT/ipcK/M

Every folder is a normal stage folder: rerunning reuses finished ones and resumes an interrupted evaluation.
Prints one line per (IPC, method): accuracy mean ± std (n), selection seconds, and writes OUT/table.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

METHODS = ["random", "herding", "kcenter", "forgetting", "glister", "easy", "hard", "middle"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="in this order")
    ap.add_argument("--phase", choices=["both", "select", "eval"], default="both")
    ap.add_argument("--select-first", action="store_true", help="all selections of an IPC before its evaluations")
    args = ap.parse_args(argv)

    from padistill.config import load_config
    from padistill.context import prepare
    from padistill.evaluate import run_eval
    from padistill.select import run_select

    out = Path(args.out)
    base = [f"data.root={args.data_root}"]
    prepared = None
    for ipc in args.ipc:
        preset = f"cpu/coreset-cifar10-ipc{ipc}"
        cfgs = {m: load_config(preset=preset, overrides=[*base, f"select.method={m}"]) for m in args.methods}
        if prepared is None:
            prepared = prepare(cfgs[args.methods[0]])
        order = [(m, "select") for m in cfgs] + [(m, "eval") for m in cfgs] if args.select_first else \
            [(m, step) for m in cfgs for step in ("select", "eval")]  # method by method, in the order given
        for m, step in order:
            cfg = cfgs[m]
            if step == "select" and args.phase in ("both", "select"):
                t = time.perf_counter()
                run_select(cfg, dataclasses.replace(prepared, config=cfg), out / f"ipc{ipc}" / m,
                           embed_dir=out / "ipc10" / "embed", scores_dir=out / "ipc10" / "scores", show_progress=False)
                print(f"[{time.strftime('%H:%M:%S')}] select ipc{ipc} {m}: {time.perf_counter() - t:.1f}s", flush=True)
            if step == "eval" and args.phase in ("both", "eval"):
                t = time.perf_counter()
                run_eval(out / f"ipc{ipc}" / m, prepared=dataclasses.replace(prepared, config=cfg), show_progress=False)
                print(f"[{time.strftime('%H:%M:%S')}] eval ipc{ipc} {m}: {time.perf_counter() - t:.1f}s", flush=True)
    (out / "table.md").write_text(table(out), encoding="utf-8")
    print(table(out))
    return 0


def table(out: Path) -> str:
    """Markdown: one row per method, one column per IPC (accuracy, selection seconds)."""
    ipcs = sorted(int(p.name[3:]) for p in out.glob("ipc*") if p.name[3:].isdigit())
    lines = ["| method | " + " | ".join(f"IPC {k}: top-1 % | IPC {k}: selection s" for k in ipcs) + " |",
             "|---|" + "---|---|" * len(ipcs)]
    for m in METHODS:
        cells = []
        for k in ipcs:
            folder = out / f"ipc{k}" / m
            acc, secs = "not run", ""
            try:
                man = json.loads((folder / "manifest.json").read_text())
                secs = f"{man['selection_seconds']:.1f}"
                res = json.loads((folder / "eval" / "results.json").read_text())
                r = next(iter(res["table"]["rows"][0]["results"].values()))
                acc = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} (n={r['n']})"
            except (OSError, KeyError, ValueError, StopIteration):
                pass
            cells += [acc, secs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
