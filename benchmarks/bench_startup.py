"""Start-up: seconds from command to the first distillation iteration (data load + ZCA), issue 7.

    python -m benchmarks.bench_startup [--data-root ../shared/data]

Measures, each in a fresh process: (1) `prepare()` of CIFAR-10 with a cold ZCA cache (load, fit, whiten),
(2) with a warm cache (load, whiten), (3) `padistill distill` on the pad/cifar10-ipc1 preset from process
start to the first finished iteration, with a warm cache, a one-expert random-walk buffer and real-image
init (the correct-image scan would search every image of a class with a random expert).
The reference implementation takes 50-70 s to its first iteration on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import banner, fake_expert_folder, loadavg

ROOT = Path(__file__).resolve().parents[1]


def prepare_case(data_root: str, cache: str) -> dict:
    code = (
        "import time; t=time.perf_counter();"
        "from padistill.config import load_config; from padistill.context import prepare;"
        f"cfg=load_config(preset='pad/cifar10-ipc1', overrides=['data.root={data_root}', 'device=cpu']);"
        "p=prepare(cfg, log=lambda *_: None); import json, resource;"
        "print(json.dumps({'seconds': time.perf_counter()-t, 'load_seconds': p.load_seconds,"
        " 'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20}))")
    env = {**os.environ, "PADISTILL_CACHE": cache}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t
    return res


def first_iteration_case(data_root: str, cache: str, work: Path) -> dict:
    """Wall time of `padistill distill` until metrics.jsonl has its first line."""
    from padistill.nets import build

    experts = work / "experts"
    if not experts.exists():
        model = build("convnet", num_classes=10, channels=3, im_size=(32, 32), seed=0)
        fake_expert_folder(experts, model, epochs=6, num=1)
    out = work / "distill"
    cmd = [sys.executable, "-m", "padistill", "distill", "--preset", "pad/cifar10-ipc1", "--data-root", data_root,
           "--device", "cpu", "--experts", str(experts), "--out", str(out), "--set", "distill.iterations=2",
           "--set", "distill.image_init=real", "--quiet", "--overwrite"]
    env = {**os.environ, "PADISTILL_CACHE": cache}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    while proc.poll() is None and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.05)
    first = time.perf_counter() - t
    proc.wait()
    return {"seconds_to_first_iteration": first, "returncode": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    banner("start-up (CIFAR-10, ZCA)", data_root=args.data_root, load=loadavg())
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        cold = prepare_case(args.data_root, cache)
        warm = prepare_case(args.data_root, cache)
        print(f"prepare, cold ZCA cache : {cold['process_seconds']:6.1f} s  (peak RSS {cold['peak_rss_gib']:.2f} GiB)")
        print(f"prepare, warm ZCA cache : {warm['process_seconds']:6.1f} s  (peak RSS {warm['peak_rss_gib']:.2f} GiB)")
        first = first_iteration_case(args.data_root, cache, Path(work))
        print(f"distill to 1st iteration: {first['seconds_to_first_iteration']:6.1f} s  (reference 50-70 s; "
              f"exit {first['returncode']}; load {loadavg():.2f})")


if __name__ == "__main__":
    main()
