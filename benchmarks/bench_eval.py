"""Evaluation speed (issue 5): one protocol epoch on an IPC-10 CIFAR-10-shaped set and one test pass.

    nice -n 10 python -m benchmarks.bench_eval [--threads 1 2] [--reps 7] [--microbatch 25 50 0]
                                                [--test-batch 32 64 256] [--test-images 10000]
                                                [--bf16] [--compile]

Epoch: ConvNet-3 (width 128, instance norm), 100 images 3x32x32, soft labels (soft CE), DSA, SGD with
momentum and weight decay, through the real code path (`training.train_epoch`, micro-batched) — against
the reference's way in the same process: the whole batch at once with PyTorch's own GroupNorm,
Conv2d and AvgPool2d.
Test pass: `training.accuracy` over `--test-images` images in `--test-batch` chunks, against batches of
256 with the native layers. Cases are interleaved rep by rep (a shared machine's load hits all of them alike);
medians are printed with the load average. Timings do not depend on the values, so the tensors are random.
`--bf16` and `--compile` add cases that padistill does not offer (bfloat16 autocast; torch.compile): they
measure what those routes would give, for the record in benchmarks/README.md.
Targets (2-core development machine): epoch well under 0.125 s, 10,000-image test pass well under 10 s
(reference measured at 0.25 s and 21 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from benchmarks.common import banner, loadavg


def build(native: bool):
    """ConvNet-3 with padistill's fast layers, or (native=True) with PyTorch's own GroupNorm, Conv2d and
    AvgPool2d, as the reference builds it."""
    from padistill.nets import build as build_net
    from padistill.nets.common import NATIVE_ENVS

    old = {k: os.environ.get(k) for k in NATIVE_ENVS}
    os.environ.update({k: "1" if native else "0" for k in NATIVE_ENVS})
    try:
        return build_net("convnet", 10, 3, (32, 32), seed=0)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def main() -> None:
    from padistill.augment import DSA
    from padistill.training import accuracy, train_epoch
    from padistill.utils.rng import generator

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--microbatch", type=int, nargs="+", default=[25, 50], help="0 = whole batch")
    ap.add_argument("--test-batch", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--test-reps", type=int, default=2)
    ap.add_argument("--bf16", action="store_true",
                    help="add a case outside the fp32 targets: PyTorch's layers, whole batch, under "
                         "torch.autocast('cpu', bfloat16) (AMX on CPUs that have it; not equal within fp32 tolerance)")
    ap.add_argument("--compile", action="store_true",
                    help="add a case: PyTorch's layers, whole batch, torch.compile (inductor; needs a C++ compiler; "
                         "the compile time is printed, the epochs are timed after it)")
    ap.add_argument("--no-malloc-tune", action="store_true",
                    help="leave glibc's allocator thresholds alone (the eval stage raises them on the CPU; "
                         "both cases share this process, so the reference's way gets the same allocator)")
    args = ap.parse_args()
    if not args.no_malloc_tune:
        from padistill.utils.allocator import tune_cpu_allocator

        tune_cpu_allocator()
    banner("bench_eval", threads=args.threads, reps=args.reps, microbatch=args.microbatch,
           test_batch=args.test_batch, test_images=args.test_images,
           malloc_tuned=not args.no_malloc_tune, bf16=args.bf16, compile=args.compile)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, 32, 32, generator=g)
    soft = torch.randn(100, 10, generator=g)
    xt = torch.randn(args.test_images, 3, 32, 32, generator=g)
    yt = torch.randint(0, 10, (args.test_images,), generator=g)
    dsa = DSA()
    for threads in args.threads:
        torch.set_num_threads(threads)
        cases = {f"ours mb={mb or 'all'}": (build(False), mb or None) for mb in args.microbatch}
        cases["reference (whole batch, native layers)"] = (build(True), None)
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                for k, (m, _) in cases.items()}
        modes = dict.fromkeys(cases, contextlib.nullcontext)
        if args.bf16:
            m = build(True)
            cases["bf16 autocast (native layers, whole batch)"] = (m, None)
            opts["bf16 autocast (native layers, whole batch)"] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9,
                                                                                weight_decay=5e-4)
            modes["bf16 autocast (native layers, whole batch)"] = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        if args.compile:
            m = build(True)
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            m = torch.compile(m)
            t = time.perf_counter()
            for rep in range(2):  # the first call compiles the forward, the second settles the backward
                train_epoch(m, opt, x, soft, 128, generator(0, "bench", rep), augment=dsa, microbatch=None)
            print(f"torch.compile: first two epochs took {time.perf_counter() - t:.1f} s")
            cases["torch.compile (native layers, whole batch)"] = (m, None)
            opts["torch.compile (native layers, whole batch)"] = opt
            modes["torch.compile (native layers, whole batch)"] = contextlib.nullcontext
        times: dict[str, list[float]] = {k: [] for k in cases}
        loads = []
        for rep in range(args.reps + 1):
            for k, (m, mb) in cases.items():
                t = time.perf_counter()
                with modes[k]():
                    train_epoch(m, opts[k], x, soft, 128, generator(0, "bench", rep), augment=dsa, microbatch=mb)
                if rep:  # rep 0 warms up
                    times[k].append(time.perf_counter() - t)
            loads.append(loadavg())
        print(f"\n## epoch, IPC-10 set (100 images), DSA, soft CE, {threads} thread(s), load {max(loads):.2f}")
        for k, ts in times.items():
            print(f"{k:44s} median {statistics.median(ts):.3f} s   min {min(ts):.3f} s")
        tcases = {f"ours test_batch={b}": (cases[next(iter(cases))][0], b) for b in args.test_batch}
        tcases["reference (batch 256, native layers)"] = (cases["reference (whole batch, native layers)"][0], 256)
        tmodes = dict.fromkeys(tcases, contextlib.nullcontext)
        if args.bf16:
            k = "bf16 autocast (native layers, batch 256)"
            tcases[k] = (cases["bf16 autocast (native layers, whole batch)"][0], 256)
            tmodes[k] = modes["bf16 autocast (native layers, whole batch)"]
        ttimes: dict[str, list[float]] = {k: [] for k in tcases}
        loads = []
        for _ in range(args.test_reps):
            for k, (m, b) in tcases.items():
                t = time.perf_counter()
                with tmodes[k]():
                    accuracy(m, xt, yt, batch=b)
                ttimes[k].append(time.perf_counter() - t)
            loads.append(loadavg())
        print(f"\n## test pass, {args.test_images} images, {threads} thread(s), load {max(loads):.2f}")
        for k, ts in ttimes.items():
            print(f"{k:44s} median {statistics.median(ts):.2f} s   min {min(ts):.2f} s")


if __name__ == "__main__":
    main()
