"""`padistill run`: all five stages, reuse of finished stages, refusal of stale ones, resume after a kill."""

import json

import pytest
import torch

from helpers import TINY_OVERRIDES, killed_at
from padistill.errors import PadistillError
from padistill.pipeline import run_pipeline
from padistill.utils.io import load_tensors

OVERRIDES = [*TINY_OVERRIDES, "experts.schedule.enabled=true", "experts.schedule.init_ratio=0.5",
             "experts.schedule.add_end_epoch=1", "experts.schedule.rm_epoch_first=2",
             "experts.schedule.rm_epoch_second=3", "scores.models=1", "scores.epochs=1", "scores.batch=256",
             "eval.nets=[convnet-2]"]
STAGES = ("scores", "experts", "distill", "eval", "report")


def pipeline(root, *extra, messages=None):
    log = messages.append if messages is not None else (lambda *_: None)
    return run_pipeline("pad", out=str(root), overrides=[*OVERRIDES, *extra], log=log, show_progress=False)


def manifest(root, stage):
    return json.loads((root / stage / "manifest.json").read_text())


def test_all_stages_then_reuse_then_refuse_stale(tmp_path):
    root = pipeline(tmp_path / "run")
    for stage in STAGES[:4]:
        assert manifest(root, stage)["status"] == "complete", stage
    assert (root / "report" / "index.html").is_file()
    # the experts were trained on the scheduled subsets of the scores' ordering
    sizes = [json.loads(x)["train_size"] for x in (root / "experts" / "metrics.jsonl").read_text().splitlines()
             if "train_size" in x]
    assert min(sizes) < max(sizes)

    stamps = {s: (root / s / "manifest.json").stat().st_mtime_ns for s in STAGES[:4]}
    messages = []
    pipeline(root, messages=messages)  # same settings: every stage reused, nothing recomputed
    assert {s: (root / s / "manifest.json").stat().st_mtime_ns for s in STAGES[:4]} == stamps
    assert sum("reusing it" in m for m in messages) == 4

    with pytest.raises(PadistillError, match="different"):  # a changed setting never reuses a stale folder
        pipeline(root, "distill.lr_images=7")


def test_killed_distillation_resumes_and_matches(tmp_path):
    ref = pipeline(tmp_path / "ref", "distill.iterations=4")

    with killed_at(2), pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path / "run", "distill.iterations=4")
    messages = []
    root = pipeline(tmp_path / "run", "distill.iterations=4", messages=messages)
    assert any("resuming" in m for m in messages)
    for f in ("images.pt", "labels.pt", "lr.pt"):
        assert torch.equal(load_tensors(root / "distill" / f), load_tensors(ref / "distill" / f)), f
