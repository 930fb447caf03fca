"""One expert epoch on the full CIFAR-10 training set (50,000 images, batch 256, DSA, ZCA), SGD and GSAM (issue 3).

    python -m benchmarks.bench_experts [--data-root ../shared/data] [--epochs 2] [--optimizers sgd gsam]
                                       [--microbatch 32 64] [--reference] [--images N]

Each optimiser runs in a fresh process (its own peak RSS) through the real expert code path
(`experts.train.make_optimizer` + `training.train_epoch`, ConvNet-3 width 128, micro-batches of
`experts.microbatch`), after one warm-up batch. Prints the median and every epoch time with the machine load.
`--reference` adds, in the same run, the reference's way: PyTorch's own GroupNorm, Conv2d and AvgPool2d,
the whole batch of 256 at once, glibc's default allocator. `--images N` times epochs over the first N
shuffled images only and scales to 50,000 (for quick same-run ratios).
Targets on the 2-core development machine: < 115 s (SGD) and < 230 s (GSAM) per epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.common import banner, loadavg, peak_rss_gib, run_isolated

ROOT = Path(__file__).resolve().parents[1]


def run_case(case: dict) -> dict:
    import os

    import torch

    from padistill.config import load_config
    from padistill.context import build_net, make_augment, prepare
    from padistill.experts.train import make_optimizer
    from padistill.nets.common import NATIVE_ENVS
    from padistill.training import train_epoch
    from padistill.utils.allocator import tune_cpu_allocator
    from padistill.utils.rng import generator

    reference = case.get("reference", False)
    os.environ.update({k: "1" if reference else "0" for k in NATIVE_ENVS})
    if case.get("tune_malloc", True) and not reference:
        tune_cpu_allocator()  # what run_experts does on the CPU
    cfg = load_config(preset="pad/cifar10-ipc10", overrides=[
        f"data.root={case['data_root']}", "device=cpu", f"experts.optimizer={case['optimizer']}",
        *([f"experts.microbatch={case['microbatch']}"] if case.get("microbatch") else []),
        *(["experts.microbatch=256"] if reference else [])])  # the whole batch
    t = time.perf_counter()
    prepared = prepare(cfg, log=lambda *_: None)
    load_s = time.perf_counter() - t
    model = build_net(prepared, seed=0)
    opt = make_optimizer(cfg, model)
    g = generator(0, "bench-experts")
    augment = make_augment(True)
    x, y = prepared.x_train, prepared.y_train
    e = cfg.experts
    subset = torch.arange(min(case.get("images") or len(x), len(x)))
    scale = len(x) / len(subset)
    train_epoch(model, opt, x, y, e.batch, g, augment=augment, microbatch=e.microbatch,
                indices=torch.arange(e.batch))  # warm-up: one batch
    times, loads = [], []
    cpu0 = time.process_time()
    for _ in range(case["epochs"]):
        t = time.perf_counter()
        stats = train_epoch(model, opt, x, y, e.batch, g, augment=augment, microbatch=e.microbatch, indices=subset)
        times.append((time.perf_counter() - t) * scale)
        loads.append(loadavg())
    cpu = time.process_time() - cpu0
    return {"case": "reference way" if reference else "padistill", "optimizer": case["optimizer"],
            "images": stats["samples"], "per_50k": round(scale, 3), "epoch_s": [round(s, 1) for s in times],
            "median_s": round(statistics.median(times), 1), "train_acc_last": round(stats["acc"], 4),
            "load_during": loads, "prepare_s": round(load_s, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "threads": torch.get_num_threads(), "microbatch": e.microbatch,
            "malloc_tuned": case.get("tune_malloc", True) and not reference,
            "cpu_s_per_epoch": round(cpu * scale / len(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "gsam"])
    ap.add_argument("--no-malloc-tune", action="store_true", help="leave glibc's allocator thresholds alone")
    ap.add_argument("--microbatch", type=int, nargs="+", default=[0],
                    help="experts.microbatch values to compare (0 = the preset's)")
    ap.add_argument("--reference", action="store_true", help="also time the reference's way in the same run")
    ap.add_argument("--images", type=int, default=0, help="time epochs over this many images (0 = all 50,000)")
    ap.add_argument("--case")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    banner("expert epoch, CIFAR-10 50k, ConvNet-3 w128, batch 256, DSA, ZCA", epochs=args.epochs)
    for opt in args.optimizers:
        cases = [{"microbatch": mb} for mb in args.microbatch] + ([{"reference": True}] if args.reference else [])
        results = []
        for extra in cases:
            res = run_isolated("benchmarks.bench_experts",
                               {"optimizer": opt, "epochs": args.epochs, "data_root": args.data_root,
                                "tune_malloc": not args.no_malloc_tune, "images": args.images, **extra})
            results.append(res)
            print(json.dumps(res), flush=True)
        if args.reference and all("median_s" in r for r in results):
            ref = results[-1]["median_s"]
            for res in results[:-1]:
                print(f"# {opt}, micro-batch {res['microbatch']}: {res['median_s']} s per 50k images vs {ref} s "
                      f"the reference's way: {ref / res['median_s']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
