"""`padistill eval RUN_DIR`: the stage folder, reuse / resume, best_*.pt, refusals, KD rows, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import padistill.evaluate.stage as stage_mod
from evalkit import make_run
from padistill.data import fit_preprocessor
from padistill.errors import PadistillError
from padistill.evaluate import run_eval
from padistill.utils.manifest import read_manifest

QUIET = dict(log=lambda *_: None, show_progress=False)


def test_run_eval_writes_table_with_baseline_and_reuses(tmp_path, prepared, monkeypatch):
    root = make_run(tmp_path / "run", prepared)
    out = run_eval(root, nets=["convnet-2", "mlp"], epochs=1, runs=2, **QUIET)
    assert out == root / "eval"
    m = read_manifest(out)
    assert m["stage"] == "eval" and m["status"] == "complete"
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["table"]["rows"]}
    assert list(rows) == ["distilled", "random"]
    assert set(rows["distilled"]["results"]) == {"convnet-2", "mlp"}
    assert all(len(r["accs"]) == 2 for r in rows["distilled"]["results"].values())
    assert set(rows["distilled"]["improvement"]) == {"convnet-2", "mlp"}
    assert rows["distilled"]["results"]["mlp"]["settings"]["lr"] == pytest.approx(0.02)  # the learned lr
    assert rows["random"]["results"]["mlp"]["settings"]["lr"] == 0.01  # baselines: eval.lr or 0.01
    assert rows["distilled"]["results"]["mlp"]["settings"]["labels"].startswith("soft")
    assert rows["random"]["results"]["mlp"]["settings"]["labels"].startswith("hard")
    assert res["data"]["test_images"] == len(prepared.y_test)
    md = (out / "table.md").read_text()
    assert "| method | convnet-2 | mlp | avg |" in md and "↑ distilled vs random" in md and "(n=2)" in md
    assert "Protocol: 2 epochs" in md

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(stage_mod, "cross_arch", boom)
    assert run_eval(root / "distill", nets=["convnet-2", "mlp"], epochs=1, runs=2, **QUIET) == out  # reused
    with pytest.raises(PadistillError, match="different eval run"):
        run_eval(root, nets=["mlp"], epochs=1, runs=2, **QUIET)


def test_best_set_is_evaluated_and_no_baseline_option(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, best=True)
    out = run_eval(root, nets=["mlp"], epochs=0, runs=1, baseline=False, **QUIET)
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["table"]["rows"]}
    assert list(rows) == ["distilled", "distilled (best on val)"]
    assert rows["distilled (best on val)"]["results"]["mlp"]["settings"]["lr"] == pytest.approx(0.04)
    assert "iteration 20" in rows["distilled (best on val)"]["description"]


def test_whitened_set_without_its_transform_is_refused(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, metrics=False)
    (root / "distill" / "preprocess.pt").unlink()
    with pytest.raises(PadistillError, match="preprocess.pt") as e:
        run_eval(root, epochs=0, **QUIET)
    assert "\n" not in str(e.value)


def test_set_with_another_datasets_transform_is_refused(tmp_path, prepared):
    root = make_run(tmp_path / "run", prepared, metrics=False)
    other = fit_preprocessor("zca", torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8),
                             dataset_fingerprint="another-dataset")
    other.save(root / "distill" / "preprocess.pt")
    with pytest.raises(PadistillError, match="model space") as e:
        run_eval(root, epochs=0, **QUIET)
    assert "\n" not in str(e.value) and "preprocess.pt" in str(e.value)
    # the same set evaluated with normalisation instead of its ZCA: refused too
    root2 = make_run(tmp_path / "run2", prepared, metrics=False)
    with pytest.raises(PadistillError, match="model space"):
        run_eval(root2, overrides=["data.preprocess=normalize"], epochs=0, **QUIET)


def test_kd_rows_use_the_expert_teacher(tmp_path, prepared, tiny_experts):
    root = make_run(tmp_path / "run", prepared, metrics=False)
    (root / "experts").symlink_to(tiny_experts, target_is_directory=True)
    out = run_eval(root, overrides=["eval.kd_teacher=expert"], nets=["convnet-2"], epochs=1, runs=1, **QUIET)
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["table"]["rows"]}
    assert list(rows) == ["distilled", "random", "random + teacher labels", "distilled + KD", "random + KD"]
    assert rows["distilled + KD"]["baseline"] == "random + KD"
    assert rows["distilled + KD"]["results"]["convnet-2"]["settings"]["labels"].startswith("teacher")
    assert "expert 0" in rows["distilled + KD"]["description"]
    with pytest.raises(PadistillError, match="kd_teacher"):
        run_eval(root, overrides=["eval.kd_teacher=nowhere.pt"], epochs=0, out=tmp_path / "e2", **QUIET)


def test_interrupted_evaluation_resumes_from_partial_results(tmp_path, prepared, monkeypatch):
    root = make_run(tmp_path / "run", prepared, metrics=False)
    real = stage_mod.cross_arch

    def crash_after_first_run(sets, nets, prepared, cfg, on_run=None, **kw):
        def on_run_then_crash(row, net, run, acc):
            on_run(row, net, run, acc)
            raise KeyboardInterrupt

        return real(sets, nets, prepared, cfg, on_run=on_run_then_crash, **kw)

    monkeypatch.setattr(stage_mod, "cross_arch", crash_after_first_run)
    with pytest.raises(KeyboardInterrupt):
        run_eval(root, nets=["mlp"], epochs=0, runs=2, **QUIET)
    partial = json.loads((root / "eval" / "partial.json").read_text())
    assert list(partial) == ["distilled"] and partial["distilled"]["mlp"].keys() == {"0"}
    partial["distilled"]["mlp"]["0"] = 0.987  # a marker: the resumed run must reuse it, not retrain
    (root / "eval" / "partial.json").write_text(json.dumps(partial))
    monkeypatch.setattr(stage_mod, "cross_arch", real)
    run_eval(root, nets=["mlp"], epochs=0, runs=2, **QUIET)
    res = json.loads((root / "eval" / "results.json").read_text())
    assert res["table"]["rows"][0]["results"]["mlp"]["accs"][0] == 0.987
    assert not (root / "eval" / "partial.json").exists()  # complete: results.json holds every run


def test_cli_eval_and_report(tmp_path, prepared, capsys):
    from padistill.cli import main

    root = make_run(tmp_path / "run", prepared)
    assert main(["eval", str(root), "--nets", "mlp", "--runs", "1", "--epochs", "0", "--quiet"]) == 0
    assert (root / "eval" / "table.md").is_file()
    assert main(["report", str(root)]) == 0
    assert (root / "report" / "index.html").is_file()
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "padistill: error:" in capsys.readouterr().err


def test_pipeline_distill_with_validation_then_eval_and_report(tmp_path, tiny_experts):
    """End to end through `padistill run`'s stages: validation-selected best set, evaluation, report."""
    from helpers import TINY_OVERRIDES
    from padistill.pipeline import run_pipeline

    root = tmp_path / "run"
    root.mkdir()
    (root / "experts").symlink_to(tiny_experts, target_is_directory=True)
    overrides = [*TINY_OVERRIDES, "data.val_per_class=5", "distill.eval_every=1", "distill.eval_epochs=1",
                 "eval.nets=[convnet-2]", "eval.epochs=1", "experts.schedule.enabled=false"]
    run_pipeline("pad", out=str(root), overrides=overrides, stages=["distill", "eval", "report"], **QUIET)
    metrics = [json.loads(line) for line in (root / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_acc" in m for m in metrics) == 3  # one validation per iteration, on the held-out split
    assert (root / "distill" / "best_images.pt").is_file()
    res = json.loads((root / "eval" / "results.json").read_text())
    assert [r["name"] for r in res["table"]["rows"]] == ["distilled", "distilled (best on val)", "random"]
    page = (root / "report" / "index.html").read_text()
    assert "Validation accuracy during distillation" in page and "↑ distilled vs random" in page
