"""Stage folders and their manifests.

Every stage (scores, experts, distill, eval, report) writes into its own folder:
    manifest.json   stage name, status (running | complete), the key that identifies the work
                    (hash of the resolved settings that affect the result + input hashes), seed,
                    library versions, input hashes, output file hashes, timings
    config.yaml     the whole resolved config of the run that produced the folder
A later run of the same stage with the same key reuses a complete folder or resumes a running one;
a different key in the same folder is refused (never silently mixing two runs).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import padistill
from padistill.errors import PadistillError
from padistill.utils import lock
from padistill.utils.io import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temp_files,
    sha256_file,
)

MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    out = {"padistill": padistill.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": np.__version__, "platform": platform.platform()}
    try:
        import kornia

        out["kornia"] = kornia.__version__
    except Exception:  # kornia is optional for stages that never whiten
        pass
    return out


def canonical_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    data = read_json(path, "manifest")
    if not isinstance(data, dict) or "stage" not in data or "key" not in data:
        raise PadistillError(f"{path}: not a padistill manifest (missing 'stage'/'key')")
    return data


class StageDir:
    """A stage's output folder: decides reuse / resume / refuse and writes the manifest."""

    def __init__(self, folder: str | Path, stage: str, settings: dict, inputs: dict[str, str], seed: int,
                 config_yaml: str | None = None):
        self.path = Path(folder)
        self.stage = stage
        self.settings = settings
        self.inputs = inputs
        self.seed = seed
        self.config_yaml = config_yaml
        self.key = canonical_hash({"stage": stage, "settings": settings, "inputs": inputs, "seed": seed})
        self._started = time.time()
        self.extra: dict[str, Any] = {}

    def existing(self) -> dict | None:
        return read_manifest(self.path)

    def state(self) -> str:
        """'missing' | 'complete' | 'running' (same key, resumable) | 'different' (another run)."""
        m = self.existing()
        if m is None:
            return "missing"
        if m.get("stage") != self.stage or m.get("key") != self.key:
            return "different"
        return "complete" if m.get("status") == "complete" else "running"

    def begin(self, overwrite: bool = False) -> str:
        """Prepare the folder; returns the state found ('missing', 'running' or 'complete').

        Takes the folder's write lock first (held until `complete()` or the end of the process), so a second
        writer is refused before it can read a half-written manifest or sweep this run's temp files."""
        lock.acquire(self.path, self.stage)
        try:
            st = self.state()
        except BaseException:
            lock.release(self.path)
            raise
        if st == "different" and not overwrite:
            lock.release(self.path)
            m = self.existing() or {}
            raise PadistillError(
                f"{self.path}: holds a different {m.get('stage', '?')} run (its settings or inputs differ); "
                "choose another output folder or pass --overwrite")
        if st == "complete":
            lock.release(self.path)
            return st
        lock.record(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.path)  # half-written files of a killed run (never renamed into place)
        if st in ("missing", "different"):
            self._write("running", {})
        if self.config_yaml is not None:
            atomic_write_text(self.path / "config.yaml", self.config_yaml)
        return "missing" if st == "different" else st

    def update(self, **extra: Any) -> None:
        self.extra.update(extra)
        self._write("running", {})

    def complete(self, outputs: list[str] | None = None, **extra: Any) -> None:
        self.extra.update(extra)
        hashes = {name: sha256_file(self.path / name) for name in (outputs or []) if (self.path / name).is_file()}
        self._write("complete", hashes)
        lock.release(self.path)

    def _write(self, status: str, outputs: dict[str, str]) -> None:
        old = self.existing() if (self.path / MANIFEST).is_file() else None
        created = old.get("created") if old and old.get("key") == self.key else None
        manifest = {
            "stage": self.stage,
            "status": status,
            "key": self.key,
            "seed": self.seed,
            "settings": self.settings,
            "inputs": self.inputs,
            "outputs": outputs,
            "versions": versions(),
            "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.extra,
        }
        atomic_write_json(self.path / MANIFEST, manifest)


def require_complete(folder: str | Path, stage: str, verify: tuple[str, ...] = ()) -> dict:
    """Read the manifest of an input folder and insist that it is a finished `stage`.

    `verify`: output files whose sha256 must still be the one the stage recorded (for small files that a
    later stage trusts, e.g. an ordering; a file that is missing is left to its loader to report)."""
    m = read_manifest(folder)
    if m is None:
        raise PadistillError(f"{folder}: no {MANIFEST}; expected the output folder of `padistill {stage}`")
    if m["stage"] != stage:
        raise PadistillError(f"{folder}: is a '{m['stage']}' folder, expected '{stage}'")
    if m.get("status") != "complete":
        raise PadistillError(f"{folder}: the {stage} stage did not finish; re-run it to resume")
    for field in ("inputs", "outputs", "settings"):
        if not isinstance(m.get(field, {}), dict):
            raise PadistillError(f"{Path(folder) / MANIFEST}: '{field}' must be a mapping; found "
                                 f"{type(m[field]).__name__} (edited by hand?)")
    outputs = m.get("outputs") or {}
    for name in verify:
        path = Path(folder) / name
        if not path.is_file():
            continue
        if name not in outputs:
            raise PadistillError(f"{path}: not among the outputs recorded in {MANIFEST}; re-run "
                                 f"`padistill {stage}`")
        if sha256_file(path) != outputs[name]:
            raise PadistillError(f"{path}: changed since the {stage} stage wrote it (its sha256 differs from "
                                 f"{MANIFEST}); re-run `padistill {stage}` (or --overwrite)")
    return m
