"""Optional metric mirrors (TensorBoard, wandb): never required, fed from the same records as metrics.jsonl."""

import json
import sys
import types

import pytest

from helpers import tiny_config
from padistill.config import load_config
from padistill.distill import run_distill
from padistill.errors import PadistillError
from padistill.utils.loggers import MetricsLog, scalars


def test_scalars_flatten_lists_and_drop_text():
    rec = {"it": 3, "loss": 0.5, "status": "applied", "per_layer": {"features.0": 1.0, "classifier": 2.0},
           "lr_clamped": False, "n": 2, "xs": [4, 5]}
    assert scalars(rec) == {"loss": 0.5, "per_layer/features.0": 1.0, "per_layer/classifier": 2.0, "n": 2.0,
                            "xs/0": 4.0, "xs/1": 5.0}


def test_unknown_logger_is_a_config_error():
    with pytest.raises(PadistillError, match="distill.loggers"):
        load_config(preset="quickstart", overrides=["distill.loggers=[tb]"])


def test_missing_package_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(PadistillError, match=r"pip install 'padistill\[wandb\]'"):
        MetricsLog(tmp_path / "metrics.jsonl", ["wandb"])


class FakeRun:
    def __init__(self, **kw):
        self.kw, self.logged, self.finished = kw, [], False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_wandb_mirror_gets_every_iteration(tmp_path, tiny_prepared, tiny_experts, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = tiny_config("distill.loggers=[wandb]")
    out = run_distill(cfg, tiny_prepared, tmp_path / "d", experts_dir=tiny_experts, log=lambda *_: None,
                      show_progress=False)
    (run,) = runs
    assert run.finished and run.kw["resume"] == "allow"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in run.logged] == [r["it"] for r in lines]
    assert all(v["loss"] == r["loss"] for (_, v), r in zip(run.logged, lines))
    assert any(k.startswith("per_layer/") for k in run.logged[0][1])
