"""Run / set folder layout, one owner (padistill.artifacts): eval, export and report read it the same way."""

import pytest

from padistill.artifacts import check_set_folder, find_distill_dir, locate_run
from padistill.errors import PadistillError


def test_set_folder_is_the_folder_or_its_distill_child(tmp_path):
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "images.pt").write_bytes(b"")
    assert find_distill_dir(tmp_path) == tmp_path / "distill"
    assert find_distill_dir(tmp_path / "distill") == tmp_path / "distill"
    assert locate_run(tmp_path) == (tmp_path, tmp_path / "distill", tmp_path / "eval")
    assert locate_run(tmp_path / "distill") == (tmp_path, tmp_path / "distill", tmp_path / "eval")


def test_folders_without_a_set_are_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PadistillError, match="no distilled set"):
        find_distill_dir(empty)
    with pytest.raises(PadistillError, match="neither a run folder"):
        locate_run(empty)
    with pytest.raises(PadistillError, match="folder not found"):
        locate_run(tmp_path / "missing")
    with pytest.raises(PadistillError, match="no manifest.json"):
        check_set_folder(empty)
