"""The whole pipeline through the real command-line entry point (`padistill.cli:main`) on the tiny digits config."""

import json

import pytest

from helpers import TINY_OVERRIDES
from padistill.cli import main

OVERRIDES = [*TINY_OVERRIDES, "scores.models=1", "scores.epochs=1", "scores.batch=256", "experts.epochs=3",
             "distill.max_start_epoch=2", "distill.current_max_start_epoch=1", "eval.nets=[convnet-2]"]


@pytest.mark.slow  # ~30 s on an idle 2-core machine, minutes on a shared one
def test_padistill_run_through_main(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PADISTILL_PROGRESS", "0")
    argv = ["run", "pad", "--out", str(tmp_path / "run"), "--quiet"]
    for o in OVERRIDES:
        argv += ["--set", o]
    assert main(argv) == 0
    run = tmp_path / "run"
    for stage in ("experts", "distill", "eval"):  # no scores stage: the tiny config turns the scheduler off
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "complete", stage
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["set"]["ipc"] == 2 and results["runs"] == 1
    assert (run / "report" / "index.html").is_file()
    assert main(argv) == 0  # a second run reuses every finished stage
    assert capsys.readouterr().out.count("reusing it") >= 3
