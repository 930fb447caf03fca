"""Restricted unpickling of the CIFAR python batches.

Input: a pickle file downloaded from the internet (`data_batch_1`, `test_batch`, `meta`, ...).
Output: the unpickled object (dicts, lists, bytes, numbers and numpy arrays only).
Purpose: `pickle.load` can run arbitrary code named in the file; CIFAR only needs numpy array
reconstruction, so `find_class` allows exactly those globals and refuses everything else. Any decoding
failure (truncated or corrupt file) becomes a one-line `PadistillError` naming the file.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from padistill.errors import PadistillError


def _numpy_core(submodule: str) -> Any:
    # numpy >= 2 moved numpy.core to numpy._core (the old name still works but warns); files written by
    # either numpy version name either module, so both names resolve to whichever exists here.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed() -> dict[tuple[str, str], Any]:
    import codecs

    import numpy as np

    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 protocol-2 pickles store bytes as _codecs.encode(text, 'latin1'); torch's own
        # weights_only unpickler allows it too: it only converts text to bytes.
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        # protocol-5 pickles of arrays (numpy >= 1.16) rebuild them from a buffer instead
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: Any, path: Path) -> None:
        super().__init__(f, encoding="bytes")  # CIFAR was pickled by Python 2: keep its str as bytes
        self._path = path
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._table[(module, name)]
        except KeyError:
            raise PadistillError(f"{self._path}: refusing to unpickle {module}.{name} (only numpy arrays are "
                                 "allowed in dataset files; the file may be malicious or not a CIFAR batch)"
                                 ) from None


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle `path` allowing only numpy array reconstruction; one-line errors on any failure."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except PadistillError:
        raise
    except OSError as e:
        raise PadistillError(f"{path}: cannot read file ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # truncated/corrupt pickles raise many types (EOFError, UnpicklingError, ...)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        raise PadistillError(f"{path}: corrupt or truncated pickle ({detail})") from None
