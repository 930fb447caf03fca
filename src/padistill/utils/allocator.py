"""CPU allocator tuning for training on the CPU (glibc only; a no-op elsewhere).

Input: nothing (process-wide setting). Output: True if glibc's malloc thresholds were raised.

Why: a ConvNet-3 (width 128) micro-batch of 64 CIFAR images has 33 MB activation tensors. glibc serves every
allocation above its mmap threshold (dynamic, capped at 32 MB) with a fresh mmap and returns it with munmap on
free, so every batch page-faults and zero-fills ~1 GB of new memory. Measured on the 2-core development machine
(one thread, process CPU time per batch of 256 with DSA, SGD): 1.67 s with 0.61 s of it kernel time, versus 1.05 s
with the thresholds raised (-37%; about 210 s instead of 330 s per single-thread CIFAR-10 epoch).
Raising M_MMAP_THRESHOLD / M_TRIM_THRESHOLD to 256 MiB keeps such blocks in the heap for reuse; allocations above
256 MiB (the dataset tensors) are still mmap'ed. Every stage calls this on the CPU (scores, experts, distill,
eval): the unrolled student's 5-13 MB activations were page-faulted back the same way (IPC 10 student steps
~30 % faster with the thresholds raised, benchmarks/README.md). Cost: freed memory is returned to the OS less
eagerly (RSS stays at the peak working set). Set PADISTILL_MALLOC_TUNE=0 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 256 << 20
_done: bool | None = None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap / trim thresholds once per process (see module docstring)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("PADISTILL_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return _done
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _done
