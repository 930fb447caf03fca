"""`padistill sweep --jobs N`: cells as separate processes reading the data from one model-space cache file."""

import json

import pytest
import torch

from helpers import tiny_config
from padistill.context import prepare


def test_model_space_cache_is_read_back_and_refused_when_stale(tmp_path):
    cfg = tiny_config()
    path = tmp_path / "data.pt"
    msgs = []
    a = prepare(cfg, log=msgs.append, model_space_cache=path)
    assert path.is_file() and "read from its cache" not in msgs[-1]
    b = prepare(cfg, log=msgs.append, model_space_cache=path)
    assert "read from its cache" in msgs[-1]
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    other = tiny_config("data.preprocess=normalize")  # another transform: the file is stale, recomputed
    c = prepare(other, log=msgs.append, model_space_cache=path)
    assert "read from its cache" not in msgs[-1] and not torch.equal(c.x_train, a.x_train)
    held = tiny_config("data.val_per_class=5")  # another hold-out: stale as well
    d = prepare(held, log=msgs.append, model_space_cache=path)
    assert "read from its cache" not in msgs[-1] and d.x_val is not None


@pytest.mark.slow
def test_jobs_run_cells_as_processes_with_the_same_results(tmp_path, monkeypatch):
    from test_sweep import CELLS, sweep, write_spec

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers get min(cores // jobs, the caller's budget)
    spec = write_spec(tmp_path / "tiny.yaml")
    sweep(spec, tmp_path / "one")
    sweep(spec, tmp_path / "two", jobs=2)
    rec = json.loads((tmp_path / "two" / "sweep.json").read_text())
    assert rec["jobs"] == 2 and rec["threads"] == 1
    assert {t["outcome"] for t in rec["tasks"].values()} == {"built", "evaluated"}
    assert not (tmp_path / "two" / ".cache").exists()  # the model-space cache is removed after a finished sweep
    for cell in CELLS:
        log = (tmp_path / "two" / "logs" / f"distill-{cell}.log").read_text()
        assert "sweep worker: eval" in log and "1 torch thread(s)" in log  # distill + eval in one process
    one, two = (json.loads((tmp_path / x / "results.json").read_text())["cells"] for x in ("one", "two"))
    assert [r["nets"] for r in one] == [r["nets"] for r in two]


@pytest.mark.slow
def test_torchrun_spreads_the_cells_over_ranks(tmp_path):
    import os
    import subprocess
    import sys

    from test_sweep import CELLS, write_spec

    spec = write_spec(tmp_path / "tiny.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "padistill", "sweep", str(spec), "--out", str(tmp_path / "s"), "--quiet"], check=True, env=env,
                   capture_output=True, timeout=600)
    tasks = json.loads((tmp_path / "s" / "sweep.json").read_text())["tasks"]
    by_rank = {t.get("rank", 0) for t in tasks.values()}
    assert by_rank == {0, 1} and len(tasks) == 2 * len(CELLS) + 3  # 3 shared stages, each cell's distill + eval
    rank1 = json.loads((tmp_path / "s" / "sweep.rank1.json").read_text())["tasks"]
    assert "distill fiem" in rank1 and "eval fiem" in rank1  # the second cell, distilled and evaluated by rank 1
    res = json.loads((tmp_path / "s" / "results.json").read_text())
    assert all(r["nets"] for r in res["cells"])
