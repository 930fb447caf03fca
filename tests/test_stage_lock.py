"""One writer per stage folder: a second process is refused at once, a killed holder frees the folder, readers
are never blocked, and a stage that finished releases its lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from padistill.errors import PadistillError
from padistill.utils import lock
from padistill.utils.manifest import StageDir, read_manifest, require_complete

HOLDER = textwrap.dedent("""
    import sys, time
    from padistill.utils.manifest import StageDir
    stage = StageDir(sys.argv[1], "distill", {"a": 1}, {}, 0)
    print(stage.begin(), flush=True)
    if sys.argv[2] == "complete":
        stage.complete([])
        print("done", flush=True)
    time.sleep(120)
""")


def _start_holder(folder: Path, then: str = "hold") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), then], stdout=subprocess.PIPE, text=True,
                         env=env)
    first = p.stdout.readline().strip()
    assert first == "missing", first
    if then == "complete":
        assert p.stdout.readline().strip() == "done"
    return p


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


def test_second_writer_is_refused_naming_folder_and_holder(tmp_path):
    folder = tmp_path / "distill"
    p = _start_holder(folder)
    try:
        with pytest.raises(PadistillError) as e:
            StageDir(folder, "distill", {"a": 1}, {}, 0).begin()
        msg = str(e.value)
        assert str(folder) in msg and f"pid {p.pid}" in msg and "another process is writing" in msg
        assert "\n" not in msg
        assert not lock.held(folder)  # the refused writer holds nothing afterwards
        # readers are not blocked: the manifest of the running stage can be read meanwhile
        assert read_manifest(folder)["status"] == "running"
    finally:
        _stop(p)


def test_a_killed_holder_releases_the_folder(tmp_path):
    folder = tmp_path / "distill"
    p = _start_holder(folder)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    stage = StageDir(folder, "distill", {"a": 1}, {}, 0)
    assert stage.begin() == "running"  # resumes the killed run: no marker outlived the kill
    assert lock.held(folder)
    stage.complete([])
    assert not lock.held(folder)


def test_a_finished_stage_is_released_for_reuse_and_reading(tmp_path):
    folder = tmp_path / "distill"
    p = _start_holder(folder, then="complete")
    try:
        assert StageDir(folder, "distill", {"a": 1}, {}, 0).begin() == "complete"  # holder still alive
        assert require_complete(folder, "distill")["status"] == "complete"
    finally:
        _stop(p)


def test_same_process_may_begin_again_and_a_refusal_releases(tmp_path):
    folder = tmp_path / "distill"
    a = StageDir(folder, "distill", {"a": 1}, {}, 0)
    assert a.begin() == "missing"
    assert StageDir(folder, "distill", {"a": 1}, {}, 0).begin() == "running"  # re-entrant, no self-deadlock
    a.complete([])
    with pytest.raises(PadistillError, match="holds a different distill run"):
        StageDir(folder, "distill", {"a": 2}, {}, 0).begin()
    assert not lock.held(folder)
    p = _start_holder(tmp_path / "other")  # and another process can take a folder this one refused
    _stop(p)
