"""Scale-out helpers for stages whose units of work are independent (scoring models, experts).

Input: the torch.distributed process group the CLI initialises under `torchrun` (any backend).
Output: this process's rank / world size, its share of the work ids, and a file-system wait.

Why a file-system wait instead of `dist.barrier()` at the end of a stage: ranks finish their shares at
different times (one rank may train one expert more than another: hours at full scale), and a collective
barrier times out after the process group's timeout (30 minutes for gloo by default). The output files are
the real synchronisation point anyway, so rank 0 waits for them to appear, writes the manifest, and the other
ranks wait for the manifest. If a rank dies, torchrun stops the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(ids: range | list[int], rank: int, world: int) -> list[int]:
    """Work ids of `rank`: r, r + world, r + 2 world, ... (round-robin keeps shares within one of each other)."""
    return [i for j, i in enumerate(ids) if j % world == rank]


def barrier() -> None:
    """A short collective barrier (only around quick steps such as creating the output folder)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def wait_until(done: Callable[[], bool], what: str, log=print, poll: float = 1.0, report_every: float = 300.0) -> None:
    """Block until `done()` is true, polling the file system (see module docstring)."""
    start = last = time.monotonic()
    while not done():
        now = time.monotonic()
        if now - last >= report_every:
            log(f"waiting for {what} ({now - start:.0f}s)")
            last = now
        time.sleep(poll)


def begin_shared_stage(stage, out, rank: int, overwrite: bool, clear: Callable[[], None],
                       prepare: Callable[[str], None] | None = None) -> str:
    """Open a stage folder that several ranks write into; returns its state on every rank.

    Rank 0 begins the stage (`clear()` first removes another run's outputs when --overwrite replaces it;
    `prepare(state)` creates what the ranks need), then all ranks meet at a barrier and the others read the
    state rank 0 left (refusing a folder that holds another run's manifest)."""
    state = ""
    if rank == 0:
        found = stage.state()
        state = stage.begin(overwrite=overwrite)
        if found == "different":  # --overwrite: never mix partial results of another run
            clear()
        if prepare is not None:
            prepare(state)
    barrier()
    if rank != 0:
        state = stage.state()
        if state == "different":
            from padistill.errors import PadistillError

            raise PadistillError(f"{out}: rank {rank} sees another run's manifest")
    return state
