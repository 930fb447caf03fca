"""A/B timing of the instance norm: nn.GroupNorm (PADISTILL_NATIVE_NORM=1) vs nets/fast_norm.py.

    python -m benchmarks.bench_norm                      # all parts, 5 interleaved repetitions
    python -m benchmarks.bench_norm --parts a,d --reps 9 --threads 1

Both variants live in the same process and are timed alternately (A B A B ...), so load from other
processes on a shared machine hits both alike; medians of wall time are printed with the load average
seen. `cpu s-up` is the ratio of median process CPU times (user + system, so page faults count): with
`--threads 1` it is the robust number on a busy machine (being descheduled does not count); with 2
threads it also counts OpenMP spin-waiting.
Parts: (a) the reverse part of one 25-image micro-batch of the unrolled student (g = dL/dtheta with
create_graph, then d(g . v)/d(theta, x, labels)); (b) match_trajectory for IPC 10 (100 images,
--steps-b steps, DSA, PAD cut) in `recompute` and `plain` mode; (c) IPC 1 (10 images, --steps-c
steps), both modes; (d) one training step (forward + backward) of 256 images in micro-batches of 64
(`training.accumulate_gradients`). ConvNet-3 width 128, CIFAR-10 shapes. `rel diff` is the relative
difference of the two variants' gradients (images, labels, lr; the loss for (d)) on the same inputs.
`--malloc-tune` first raises glibc's mmap / trim thresholds (see `tune_malloc`), an option measured
for the lead: without it, every fresh activation-sized tensor is page-faulted in again.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.common import banner, loadavg


def _models():
    from padistill.nets import build
    from padistill.nets.common import NATIVE_NORM_ENV

    nets = {}
    for name, flag in (("native", "1"), ("fast", "0")):
        before = os.environ.get(NATIVE_NORM_ENV)
        os.environ[NATIVE_NORM_ENV] = flag  # read by make_norm while the net is built
        try:
            nets[name] = build("convnet", num_classes=10, channels=3, im_size=(32, 32), seed=0)
        finally:
            if before is None:
                del os.environ[NATIVE_NORM_ENV]
            else:
                os.environ[NATIVE_NORM_ENV] = before
    assert type(nets["native"].features[1]) is torch.nn.GroupNorm
    assert type(nets["fast"].features[1]) is not torch.nn.GroupNorm
    return nets


def part_a(nets):
    from padistill.losses import soft_cross_entropy
    from padistill.nets import param_layout

    layout = param_layout(nets["fast"])
    g = torch.Generator().manual_seed(0)
    theta0 = layout.flatten([p.detach() for p in nets["fast"].parameters()])
    x0, y0 = torch.randn(25, 3, 32, 32, generator=g), torch.randn(25, 10, generator=g)
    v = 1e-3 * torch.randn(layout.total, generator=g)

    def make(model):
        def run():
            th, x, y = (t.clone().requires_grad_(True) for t in (theta0, x0, y0))
            loss = soft_cross_entropy(layout.functional_forward(model, th, x), y, reduction="sum") / 100
            (gt,) = torch.autograd.grad(loss, th, create_graph=True)
            return torch.autograd.grad(torch.dot(gt, v), [th, x, y])
        return run
    return {k: make(m) for k, m in nets.items()}


def part_match(nets, ipc: int, steps: int, mode: str):
    from padistill.augment import DSA
    from padistill.filters.params import param_cut
    from padistill.match.trajectory import Student, make_plan, match_trajectory
    from padistill.nets import param_layout
    from padistill.utils.rng import generator

    layout = param_layout(nets["fast"])
    g = torch.Generator().manual_seed(0)
    start = layout.flatten([p.detach() for p in nets["fast"].parameters()])
    target = start + 0.01 * torch.randn(start.shape, generator=g)
    n = 10 * ipc
    images, labels = torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 10, generator=g)
    lr, aug, cut = torch.tensor(0.01), DSA(), param_cut(layout.total, 0.25)

    def make(model):
        student = Student(model, layout, aug, microbatch=25)
        it = [0]

        def run():
            # The same plans for both variants: iteration k of A and of B see the same draws.
            plan = make_plan(n, None, steps, aug, (32, 32), generator(0, "bench-norm", it[0] // 2))
            it[0] += 1
            return match_trajectory(student, start, target, images, labels, lr, plan, cut, mode=mode)
        return run
    return {k: make(m) for k, m in nets.items()}


def part_d(nets):
    from padistill.training import accumulate_gradients

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g)

    def make(model):
        def run():
            model.zero_grad(set_to_none=True)
            return accumulate_gradients(model, x, y, microbatch=64)
        return run
    return {k: make(m) for k, m in nets.items()}


def _flat(result) -> torch.Tensor:
    """All gradients of one run as one vector (for the native-vs-fast agreement column)."""
    if hasattr(result, "grads"):  # MatchResult
        result = list(result.grads.values()) if result.grads else [result.final]
    elif isinstance(result, tuple) and len(result) == 2 and result[0].dim() == 0:  # accumulate_gradients
        return torch.tensor([float(result[0])])
    return torch.cat([t.reshape(-1).double() for t in result])


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict:
    first = {}
    for _ in range(warmup):
        for k, f in fns.items():
            first[k] = f()
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    loads = [loadavg()]
    for _ in range(reps):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
        loads.append(loadavg())
    out = {"median": {k: statistics.median(v) for k, v in times.items()},
           "min": {k: min(v) for k, v in times.items()},
           "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "load": max(loads)}
    if "native" in first and "fast" in first:
        a, b = _flat(first["native"]), _flat(first["fast"])
        out["rel_diff"] = float((a - b).norm() / a.norm().clamp_min(1e-30))
    return out


def tune_malloc() -> bool:
    """Keep freed large blocks in the process (glibc only): M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to
    1 GiB. Returns False where it does not apply."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--malloc-tune", action="store_true")
    ap.add_argument("--parts", default="a,b,c,d")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps-b", type=int, default=5)
    ap.add_argument("--steps-c", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = tune_malloc() if args.malloc_tune else False
    torch.manual_seed(0)
    nets = _models()
    banner("instance norm A/B: nn.GroupNorm (native) vs fast_norm (fast)", reps=args.reps,
           malloc_tuned=tuned, pid=os.getpid())
    cases = []
    parts = args.parts.split(",")
    if "a" in parts:
        cases.append(("a reverse, 25-image micro-batch", lambda: part_a(nets)))
    for mode in ("recompute", "plain"):
        if "b" in parts:
            cases.append((f"b IPC 10, {args.steps_b} steps, {mode}",
                          lambda mode=mode: part_match(nets, 10, args.steps_b, mode)))
        if "c" in parts:
            cases.append((f"c IPC 1, {args.steps_c} steps, {mode}",
                          lambda mode=mode: part_match(nets, 1, args.steps_c, mode)))
    if "d" in parts:
        cases.append(("d train step, 256 images, micro-batch 64", lambda: part_d(nets)))
    print(f"{'case':<42} {'native s':>9} {'fast s':>9} {'speed-up':>8} {'cpu s-up':>8} {'load':>5} {'rel diff':>8}")
    for name, make in cases:
        r = interleaved(make(), args.reps)
        a, b = r["median"]["native"], r["median"]["fast"]
        cpu = r["cpu"]["native"] / r["cpu"]["fast"]
        print(f"{name:<42} {a:9.3f} {b:9.3f} {a / b:7.2f}x {cpu:7.2f}x {r['load']:5.2f} "
              f"{r.get('rel_diff', float('nan')):8.1e}", flush=True)


if __name__ == "__main__":
    main()
