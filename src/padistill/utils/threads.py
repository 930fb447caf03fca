"""How many CPU threads a padistill process uses, decided in one place.

Input: `--threads N` (CLI) or `PADISTILL_THREADS`; otherwise the CPUs this process may actually use.
Output: torch's intra-op thread count (and OpenMP's, for libraries started after us), and one line saying why.

Why: PyTorch's default is one thread per core of the machine. On a machine that is busy (a second padistill
process, a sweep with several jobs, a shared node) the threads of each process wait for each other at every
operation and a descheduled thread stalls the rest: two quickstart distillations with 2 threads each on 2 cores
ran at 1/30 of their solo speed. The default here counts only the CPUs the process is allowed to run on:
  - the CPU affinity mask (`taskset`, `numactl`, Slurm, `docker --cpuset-cpus`);
  - the cgroup CPU quota (`docker --cpus`, Kubernetes limits): cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`;
  - and, for `padistill sweep --jobs N`, the share the parent gives each job (`PADISTILL_THREADS`).
Order: `--threads`, then `PADISTILL_THREADS`, then `OMP_NUM_THREADS` (what PyTorch users already set), then that
default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from padistill.errors import PadistillError

ENV = "PADISTILL_THREADS"
_applied: tuple[int, str] | None = None


def affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup quota of this process (None: no quota or not readable)."""
    root = Path(root)
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def parse_threads(value: object, where: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise PadistillError(f"{where}: expected a whole number of threads >= 1, got {value!r}") from None
    if n < 1:
        raise PadistillError(f"{where}: expected a whole number of threads >= 1, got {n}")
    return n


def default_threads(cgroup_root: str | Path = "/sys/fs/cgroup") -> tuple[int, str]:
    """(threads, reason) for a process that was given no explicit count."""
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None and math.ceil(limit) < cpus:
        return max(1, math.floor(limit) or 1), f"cgroup quota {limit:g} CPUs (affinity {cpus})"
    return cpus, f"{cpus} CPUs in this process's affinity mask" + ("" if limit is None else f", quota {limit:g}")


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    if requested is not None:
        return parse_threads(requested, "--threads"), "--threads"
    for name in (ENV, "OMP_NUM_THREADS"):  # OMP_NUM_THREADS: what users of PyTorch already set
        env = os.environ.get(name)
        if env not in (None, ""):
            return parse_threads(env, name), name
    return default_threads()


def apply_threads(requested: int | None = None, log=None) -> int:
    """Set torch's thread count once per process (later calls with the same count are no-ops)."""
    global _applied
    n, why = choose_threads(requested)
    import torch

    if _applied is None or _applied[0] != n:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)  # for child processes and libraries that start OpenMP later
        _applied = (n, why)
        if log is not None:
            log(f"threads: {n} ({why}; change with --threads N or {ENV})")
    return n
