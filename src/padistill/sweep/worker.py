"""One sweep task in its own process (`padistill sweep --jobs N`): `python -m padistill.sweep.worker TASK.json`.

TASK.json (written by sweep/run.py): the resolved config, the thread budget, the model-space cache file, and the
stages to run in order (kind scores | experts | distill | eval, folder, input folders, --overwrite: a distillation
and its evaluation share one process). The process sets torch's intra-op threads to the budget (its OMP/MKL
variables are set by the parent), reads the data, runs the same stage calls as `padistill run`, and exits 0, or 2
with one `padistill: error:` line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from padistill.errors import PadistillError

    try:
        task = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        import torch

        threads = int(task.get("threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        from padistill.config import from_dict
        from padistill.context import prepare
        from padistill.sweep.run import Task, run_task

        cfg = from_dict(task["config"], where=f"{argv[0]}: config")

        def path(t, k):
            return Path(t[k]) if t.get(k) else None

        log = lambda m: print(m, flush=True)  # noqa: E731
        prepared = prepare(cfg, log=log, model_space_cache=task.get("model_space_cache"))
        for spec in task["tasks"]:
            t = Task(spec["kind"], Path(spec["folder"]), cfg, scores=path(spec, "scores"),
                     experts=path(spec, "experts"), distill=path(spec, "distill"),
                     overwrite=bool(spec.get("overwrite")))
            print(f"sweep worker: {t.kind} -> {t.folder} ({torch.get_num_threads()} torch thread(s))", flush=True)
            run_task(t, prepared, log, show_progress=False)
        return 0
    except PadistillError as e:
        print(f"padistill: error: {e}", flush=True)
        return 2
    except KeyboardInterrupt:
        print("padistill: interrupted; run the sweep again to resume", flush=True)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
