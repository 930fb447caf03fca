"""One writer per stage folder: an advisory OS lock held for the whole stage.

Input: a stage folder. Output: the lock is held by this process until `release()` or until the process ends
(the OS drops an `flock` lock when its holder exits or is killed, so nothing outlives a `kill -9`).

A second process that tries to write the same folder is refused at once with one line naming the folder and the
holder (pid, host, command, start time, read from the lock file, which the holder rewrites when it takes the lock;
the file itself carries no meaning once no process holds the lock). Readers (eval of a finished set, report,
export) never take the lock and are never blocked. Within one process the lock is re-entrant: a stage that failed
and is retried in the same process (a sweep, a test) takes it again without deadlocking on itself.
On systems without `fcntl` (Windows) there is no lock and a warning-free no-op is used.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from padistill.errors import PadistillError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_held: dict[str, int] = {}


def _key(folder: Path) -> str:
    return str(folder.resolve())


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict):
        return "another process"
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host") and info.get("host") != socket.gethostname():
        parts.append(f"on {info['host']}")
    if info.get("started"):
        parts.append(f"since {info['started']}")
    if info.get("command"):
        parts.append(f"running `{info['command']}`")
    return " ".join(parts)


def acquire(folder: str | Path, stage: str = "stage") -> None:
    """Take the write lock of `folder` (created if needed) or raise PadistillError naming the holder.

    The holder's description is written by `record()` once the caller knows it will write (a reused, complete
    folder is left untouched)."""
    folder = Path(folder)
    key = _key(folder)
    if fcntl is None or key in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder (e.g. a finished run shared read-only): nobody can write it anyway
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise PadistillError(f"{folder}: another process is writing this {stage} folder ({_holder(path)}); "
                             "wait for it to finish or stop it (a killed holder releases the lock at once)") from None
    _held[key] = fd


def record(folder: str | Path) -> None:
    """Write who holds the lock of `folder` into its lock file (read by a refused second writer)."""
    fd = _held.get(_key(Path(folder)))
    if fd is None:
        return
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def release(folder: str | Path) -> None:
    fd = _held.pop(_key(Path(folder)), None)
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def held(folder: str | Path) -> bool:
    return _key(Path(folder)) in _held
