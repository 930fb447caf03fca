"""One place that decides where tensors live.

`resolve_device("auto")` picks the first CUDA device when one is usable, else the CPU. Nothing else in
the package calls `.cuda()` or names a device: modules receive a `torch.device` and move data there.
"""

from __future__ import annotations

import torch

from padistill.errors import PadistillError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PadistillError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        idx = 0 if spec == "cuda" else spec.split(":", 1)[1]
        try:
            idx = int(idx)
        except ValueError:
            raise PadistillError(f"--device {spec}: expected auto, cpu, cuda or cuda:N") from None
        if not 0 <= idx < torch.cuda.device_count():
            raise PadistillError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", idx)
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PadistillError("--device mps: MPS is not available on this machine")
        return torch.device("mps")
    raise PadistillError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
