"""Shared helpers for the hand-run benchmarks: settings banner, medians, peak RSS, machine load.

Benchmarks print ratios measured in the same run (e.g. against this machine's own matmul peak), so
numbers from a noisy shared machine can still be compared. They are not tests and never assert times.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def loadavg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def banner(name: str, **settings) -> None:
    print(f"# {name}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load {loadavg():.2f}")
    for k, v in settings.items():
        print(f"#   {k} = {v}")


def timed(fn, warmup: int = 1, reps: int = 3) -> dict:
    """Median wall time of `fn()` after warm-up, with the load average seen while it ran."""
    for _ in range(warmup):
        fn()
    times, loads = [], [loadavg()]
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        loads.append(loadavg())
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "reps": reps,
            "load": round(max(loads), 2)}


def run_isolated(module: str, case: dict) -> dict:
    """Run one case in a fresh process so that its peak RSS is its own."""
    out = subprocess.run([sys.executable, "-m", module, "--case", json.dumps(case)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1], **case}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fake_expert_folder(folder, model, epochs: int, num: int, seed: int = 0):
    """An experts folder with random-walk trajectories (timings do not depend on the values)."""
    from pathlib import Path

    from padistill.experts.storage import LAYOUT_FILE, save_expert
    from padistill.nets import param_layout
    from padistill.utils.io import atomic_write_json
    from padistill.utils.manifest import StageDir

    folder = Path(folder)
    layout = param_layout(model)
    stage = StageDir(folder, "experts", {"benchmark": "random-walk", "epochs": epochs, "num": num}, {}, seed)
    stage.begin(overwrite=True)
    g = torch.Generator().manual_seed(seed)
    for k in range(num):
        theta = layout.flatten([p.detach() for p in model.parameters()])
        rows = [theta]
        for _ in range(epochs):
            rows.append(rows[-1] + 1e-3 * torch.randn(theta.shape, generator=g))
        save_expert(folder, k, torch.stack(rows), {"benchmark": True})
    atomic_write_json(folder / LAYOUT_FILE, {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes]})
    stage.complete()
    return folder
