"""Deterministic random streams.

One user seed feeds every stage; each consumer gets its own `torch.Generator` derived from
(seed, tags...) by hashing, so adding a random draw in one place never shifts the draws of another,
and nothing is ever seeded from the clock. Generators are CPU generators: random numbers are drawn on
the CPU and moved to the device, so CPU and GPU runs see the same draws.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *tags: object) -> int:
    text = "/".join([str(int(seed))] + [str(t) for t in tags])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *tags: object) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, *tags))
    return g


def randperm(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=g)


def randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high) (high exclusive, like numpy.random.randint)."""
    return int(torch.randint(low, high, (1,), generator=g).item())
