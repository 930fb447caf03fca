"""`padistill report`: the HTML page has every section, embeds its figures, and survives missing parts."""

from __future__ import annotations

import json
import re

import pytest
import torch

from evalkit import eval_prepared, make_run
from padistill.errors import PadistillError
from padistill.report import build_report, label_stats, read_metrics


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Small nets run faster (and steadier) on one thread."""


def _fake_results(eval_dir):
    from padistill.evaluate import EvalResult, EvalTable

    t = EvalTable(["convnet-2", "mlp"])
    t.add_row("distilled", "the distilled set", baseline="random")
    t.add_row("random", "random real images")
    for net, (a, b) in {"convnet-2": (0.8, 0.5), "mlp": (0.6, 0.4)}.items():
        t.add("distilled", EvalResult(net, [a, a + 0.02]))
        t.add("random", EvalResult(net, [b, b - 0.02]))
    eval_dir.mkdir(parents=True)
    results = {"table": t.to_dict(), "protocol": {"epochs": 1000, "batch": 128, "momentum": 0.9,
                                                  "weight_decay": 5e-4, "augment": True},
               "data": {"name": "digits", "test_images": 300}, "seconds": 12.0}
    (eval_dir / "results.json").write_text(json.dumps(results))


def test_report_has_every_section_and_embeds_figures(tmp_path):
    root = make_run(tmp_path / "run", eval_prepared(), ipc=2, best=True)
    _fake_results(root / "eval")
    page_path = build_report(root)
    assert page_path == root / "report" / "index.html"
    page = page_path.read_text()
    for heading in ("Synthetic images", "Matching loss", "Per layer", "Learned learning rate",
                    "Validation accuracy during distillation", "Labels", "Evaluation", "Settings", "Config"):
        assert f">{heading}<" in page, heading
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 6  # grid, loss, per-layer, lr, val, labels
    for png in ("grid.png", "loss.png", "per_layer.png", "lr.png", "val_acc.png", "labels.png"):
        data = (root / "report" / png).read_bytes()
        assert data.startswith(b"\x89PNG"), png
    assert "↑ distilled vs random" in page and "+32.00" in page and "+27.00" in page  # gain over random
    assert "81.00 ± 1.00 (n=2)" in page
    assert "not applied" in page
    assert "pad-cifar10-ipc10" in page  # the run name from config.yaml


def test_report_says_what_is_missing(tmp_path):
    root = make_run(tmp_path / "run", eval_prepared(), metrics=False)
    page = build_report(root, out=tmp_path / "rep").read_text()
    assert "No evaluation yet" in page and "No distillation metrics" in page
    assert ">Synthetic images<" in page and (tmp_path / "rep" / "grid.png").is_file()
    empty = tmp_path / "empty"
    (empty / "distill").mkdir(parents=True)
    page = build_report(empty).read_text()
    assert "No distilled set yet" in page and "No labels" in page
    with pytest.raises(PadistillError, match="not found"):
        build_report(tmp_path / "nowhere")


def test_metrics_reader_and_label_statistics(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"it": 0, "loss": 1.0}\nnot json\n[1, 2]\n{"it": 1, "lo')
    assert read_metrics(tmp_path / "m.jsonl") == [{"it": 0, "loss": 1.0}]
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0], [0.0, 10.0], [0.0, 0.0]])  # rows 0, 1: class 0; 2, 3: 1
    st = label_stats(logits, 2)
    assert st["argmax_is_class"] == pytest.approx(0.5)  # rows 0 and 2 (row 3 is a tie, argmax 0)
    assert st["entropy"][3] == pytest.approx(st["max_entropy"]) and st["max_prob"][3] == pytest.approx(0.5)
    assert label_stats(torch.tensor([0, 1, 1, 1]), 2)["argmax_is_class"] == pytest.approx(0.75)
