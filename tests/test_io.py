"""Atomic writes: a writer that dies leaves no half file under the real name, and its temp files are swept."""

import os

import pytest

from padistill.utils.io import atomic_write_bytes, atomic_write_with, remove_stale_temp_files


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "loss.png"
    atomic_write_bytes(target, b"old")

    def dies(p):
        p.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, dies)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["loss.png"]


def test_stale_temp_files_of_both_writers_are_swept_and_nothing_else(tmp_path):
    """A SIGKILL between mkstemp and rename cannot be cleaned up by the writer itself; a stage that (re)starts
    sweeps what both writers leave, recursively, and keeps every other file, hidden ones included."""
    seen = {}

    def keep_name(p):
        seen["name"] = p.name
        p.write_bytes(b"x")

    atomic_write_with(tmp_path / "grid.png", keep_name)  # the temp name this writer uses
    (tmp_path / "sub").mkdir()
    leftovers = [tmp_path / seen["name"], tmp_path / ".checkpoint.pt.k3j_9xq2.tmp",
                 tmp_path / "sub" / ".expert_0001.pt.abcdefgh.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    kept = [tmp_path / "grid.png", tmp_path / ".hidden.tmp", tmp_path / "notes.tmp",
            tmp_path / "sub" / "expert_0001.pt"]
    for p in kept[1:]:
        p.write_bytes(b"mine")
    assert remove_stale_temp_files(tmp_path) == 3
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)
