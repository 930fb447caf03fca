"""Difficulty scores (paper §3.2 eq. 3, Table 4a; spec §2) and the `scores` stage folder."""

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_config
from padistill.errors import PadistillError
from padistill.scores import ForgettingTracker, run_scores, sample_statistics, validate_ordering
from padistill.utils.io import atomic_save, load_tensors

QUIET = dict(log=lambda *_: None, show_progress=False)
TINY_SCORES = ("scores.models=2", "scores.epochs=2", "scores.batch=128")


def small_net(seed=0, classes=4):
    from padistill.nets import build

    return build("convnet-2", num_classes=classes, channels=3, im_size=8, seed=seed, width=8)


def test_statistics_match_their_definitions():
    torch.manual_seed(0)
    model = small_net()
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10,))
    st = sample_statistics(model, x, y)
    logits = model(x).detach()
    p = F.softmax(logits, 1)
    assert torch.allclose(st["el2n"], (p - F.one_hot(y, 4)).norm(dim=1), atol=1e-6)
    assert torch.allclose(st["loss"], F.cross_entropy(logits, y, reduction="none"), atol=1e-5)
    assert torch.allclose(st["uncertainty"], -(p * p.log()).sum(1), atol=1e-5)
    assert torch.equal(st["correct"], logits.argmax(1) == y)


def test_grand_is_the_last_layer_gradient_norm():
    """DeepCore GraNd = || d CE / d (W, b) of the classifier || per sample = EL2N * sqrt(1 + ||h||^2)."""
    torch.manual_seed(1)
    model = small_net(seed=3)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    st = sample_statistics(model, x, y)
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        g = torch.cat([model.classifier.weight.grad.reshape(-1), model.classifier.bias.grad])
        assert abs(float(g.norm()) - float(st["grand"][i])) < 1e-4 * max(1.0, float(g.norm()))


def test_grand_refuses_nets_whose_embed_is_not_the_classifier_input():
    model = small_net()
    model.embed = lambda x: x.flatten(1)[:, : model.classifier.in_features] * 0 + 1
    with pytest.raises(PadistillError, match="not the input of its last Linear"):
        sample_statistics(model, torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64))


def test_forgetting_counts_transitions_and_never_learned_is_hardest():
    tr = ForgettingTracker(4)
    for correct in ([1, 0, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 1, 0, 0]):
        tr.update(torch.tensor(correct, dtype=torch.bool))
    assert tr.scores().tolist() == [2.0, 0.0, 1.0, 5.0]  # sample 3 never learned: records + 1 = 5


def test_scores_stage_outputs_manifest_and_reuse(tmp_path, tiny_prepared):
    cfg = tiny_config(*TINY_SCORES)
    logs = []
    out = run_scores(cfg, tiny_prepared, tmp_path / "s", log=logs.append, show_progress=False)
    scores = load_tensors(out / "scores.pt")
    ordering = load_tensors(out / "ordering.pt")
    n = len(tiny_prepared.y_train)
    assert scores.dtype == torch.float32 and scores.shape == (n,) and bool((scores >= 0).all())
    labels = tiny_prepared.y_train.cpu()
    counts = torch.bincount(labels)
    assert ordering.dtype == torch.int64 and ordering.shape == (10, int(counts.min()))
    validate_ordering(ordering, labels, complete=False)
    for c in range(10):  # easiest first; the dropped surplus (digits is unbalanced) is the easiest
        row = scores[ordering[c]]
        assert bool((row[1:] >= row[:-1]).all())
        dropped = [i for i in torch.nonzero(labels == c).flatten().tolist() if i not in set(ordering[c].tolist())]
        assert all(float(scores[i]) <= float(row[0]) for i in dropped)
    all_scores = load_tensors(out / "all_scores.pt")
    assert set(all_scores) == {"el2n", "grand", "loss", "uncertainty"} and torch.equal(all_scores["el2n"], scores)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["scorer"] == "el2n" and m["inputs"]["data"] == tiny_prepared.fingerprint()
    assert len(m["models"]) == 2 and all(0 <= r["test_acc"] <= 1 for r in m["models"])
    assert m["models"][0]["init_seed"] != m["models"][1]["init_seed"]
    assert sum(m["dropped_per_class"]) == n - 10 * ordering.shape[1]
    assert not (out / "partial").exists()
    # cached: a second call reuses the folder without recomputing
    before = (out / "scores.pt").stat().st_mtime_ns
    logs.clear()
    run_scores(cfg, tiny_prepared, out, log=logs.append, show_progress=False)
    assert any("reusing" in line for line in logs) and (out / "scores.pt").stat().st_mtime_ns == before
    # same seed elsewhere -> same bytes; another seed -> another ordering
    again = run_scores(cfg, tiny_prepared, tmp_path / "s2", **QUIET)
    for name in ("scores.pt", "ordering.pt"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    other = run_scores(tiny_config(*TINY_SCORES, "seed=1"), tiny_prepared, tmp_path / "s3", **QUIET)
    assert not torch.equal(load_tensors(other / "scores.pt"), scores)
    # a different scorer in the same folder is refused (never silently mixed)
    with pytest.raises(PadistillError, match="different scores run"):
        run_scores(tiny_config(*TINY_SCORES, "scores.epochs=1"), tiny_prepared, out, **QUIET)


def test_a_scores_folder_edited_after_the_fact_is_refused(tmp_path, tiny_prepared):
    """The experts stage trusts ordering.pt: a replaced file or a manifest without the data fingerprint is refused
    instead of training experts on whatever the file now holds."""
    import shutil

    from padistill.scores import load_scores_ordering

    out = run_scores(tiny_config(*TINY_SCORES), tiny_prepared, tmp_path / "s", **QUIET)
    assert load_scores_ordering(out, tiny_prepared).shape[0] == 10
    edited = shutil.copytree(out, tmp_path / "edited")
    atomic_save(load_tensors(edited / "ordering.pt")[:, :1].clone(), edited / "ordering.pt")  # a [10, 1] ordering
    with pytest.raises(PadistillError, match=r"ordering.pt: changed since the scores stage wrote it"):
        load_scores_ordering(edited, tiny_prepared)
    for inputs, message in (({}, "records no data fingerprint"), ([1], "'inputs' must be a mapping")):
        bare = shutil.copytree(out, tmp_path / f"bare{len(message)}")
        m = json.loads((bare / "manifest.json").read_text())
        m["inputs"] = inputs
        (bare / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(PadistillError, match=message):
            load_scores_ordering(bare, tiny_prepared)


@pytest.mark.parametrize("method", ["grand", "loss", "uncertainty", "forgetting"])
def test_other_scorers_produce_valid_orderings(tmp_path, tiny_prepared, method):
    cfg = tiny_config("scores.models=1", "scores.epochs=2", "scores.batch=128", f"scores.method={method}",
                      "scores.augment=false")
    out = run_scores(cfg, tiny_prepared, tmp_path / method, **QUIET)
    scores, ordering = load_tensors(out / "scores.pt"), load_tensors(out / "ordering.pt")
    validate_ordering(ordering, tiny_prepared.y_train, complete=False)
    all_scores = load_tensors(out / "all_scores.pt")
    assert torch.equal(all_scores[method], scores)
    if method == "forgetting":
        assert set(torch.unique(scores).tolist()) <= {0.0, 1.0, 3.0}  # 2 records: 0/1 forgets, never learned = 3
        el2n = all_scores["el2n"]
        for c in range(10):  # ties broken by EL2N
            row = ordering[c]
            for a, b in zip(row[:-1].tolist(), row[1:].tolist()):
                assert (scores[a], el2n[a]) <= (scores[b], el2n[b])


def test_an_interrupted_scores_run_resumes_per_model(tmp_path, tiny_prepared):
    from padistill.scores.stage import train_scoring_model

    cfg = tiny_config(*TINY_SCORES)
    full = run_scores(cfg, tiny_prepared, tmp_path / "full", **QUIET)
    out = tmp_path / "resumed"
    rec = train_scoring_model(cfg, tiny_prepared, 0, show_progress=False)
    from padistill.config import dump_yaml
    from padistill.scores.stage import scores_settings
    from padistill.utils.manifest import StageDir

    StageDir(out, "scores", scores_settings(cfg), {"data": tiny_prepared.fingerprint()}, cfg.seed,
             dump_yaml(cfg)).begin()
    atomic_save(rec, out / "partial" / "model_000.pt")
    logs = []
    run_scores(cfg, tiny_prepared, out, log=logs.append, show_progress=False)
    assert any("model 1/2 already scored" in line for line in logs)
    assert (out / "ordering.pt").read_bytes() == (full / "ordering.pt").read_bytes()


def test_file_method_imports_a_published_ordering(tmp_path, balanced_config):
    from padistill.context import prepare
    from padistill.data import load_dataset

    cfg0 = balanced_config()
    path = tmp_path / "PUB.pt"
    full = load_dataset("npz", path=cfg0.data.options["path"])
    table = torch.stack([idx.flip(0) for idx in full.class_indices()])
    atomic_save(table, path)
    cfg = balanced_config("scores.method=file", f"scores.file={path}")
    prepared = prepare(cfg, log=lambda *_: None)
    out = run_scores(cfg, prepared, tmp_path / "s", **QUIET)
    assert torch.equal(load_tensors(out / "ordering.pt"), table)
    rank = load_tensors(out / "scores.pt")
    assert float(rank[table[0, 0]]) == 0.0 and float(rank[table[0, -1]]) == 1.0
    m = json.loads((out / "manifest.json").read_text())
    assert m["scorer"] == "file" and m["settings"]["file_sha256"]
    # a 1-D file is refused with the clear message, through the stage as well
    atomic_save(torch.randperm(48), tmp_path / "ConvNet.pt")
    bad = balanced_config("scores.method=file", f"scores.file={tmp_path / 'ConvNet.pt'}")
    with pytest.raises(PadistillError, match="1-D global ordering"):
        run_scores(bad, prepared, tmp_path / "bad", **QUIET)
    with pytest.raises(PadistillError, match="needs 'scores.file'"):  # now when the config is read, before any data
        balanced_config("scores.method=file")


def test_cli_scores_command(tmp_path, tiny_prepared):
    from padistill.cli import main
    from padistill.config import dump_yaml

    cfg = tiny_config("scores.models=1", "scores.epochs=1", "scores.batch=128")
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert main(["scores", "--config", str(path), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert (tmp_path / "s" / "ordering.pt").is_file()
