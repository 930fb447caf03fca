"""evaluate_set / cross_arch / train_on_real / random baseline / model-space checks."""

from __future__ import annotations

import pytest
import torch

import padistill.evaluate.protocol as protocol_mod
from padistill.data import fit_preprocessor
from padistill.errors import PadistillError
from padistill.evaluate import (
    EvalResult,
    EvalSet,
    EvalTable,
    check_space,
    cross_arch,
    evaluate_set,
    random_subset,
    train_on_real,
)


def test_validation_split_never_overlaps_test_and_is_what_val_evaluation_uses(prepared, monkeypatch):
    from padistill.data import load_dataset

    full = load_dataset("digits")
    n_train = len(full.y_train)
    kept = prepared.train_index
    val_idx = torch.tensor(sorted(set(range(n_train)) - set(kept.tolist())))
    assert len(val_idx) == 5 * prepared.num_classes == len(prepared.y_val)
    assert len(kept) + len(val_idx) == n_train  # a partition of the TRAINING split
    val_idx = val_idx[torch.argsort(full.y_train[val_idx], stable=True)]  # class-major, as held out
    assert torch.equal(prepared.pre.pre(full.x_train[val_idx]), prepared.x_val)  # taken from train, not test
    assert torch.equal(prepared.y_test.cpu(), full.y_test) and len(prepared.x_test) == len(full.x_test)
    tested = []
    real = protocol_mod.accuracy
    monkeypatch.setattr(protocol_mod, "accuracy", lambda m, xt, yt, batch: tested.append(xt) or real(m, xt, yt, batch))
    x, y = random_subset(prepared.x_train, prepared.y_train, 10, 2, seed=0)
    res = evaluate_set(x, y, 0.01, prepared, prepared.config, split="val", epochs=0, runs=1)
    assert len(tested) == 1 and tested[0].data_ptr() == prepared.x_val.data_ptr()
    assert res.settings["test_images"] == len(prepared.y_val)
    tested.clear()
    evaluate_set(x, y, 0.01, prepared, prepared.config, split="test", epochs=0, runs=1)
    assert tested[0].data_ptr() == prepared.x_test.data_ptr()


def test_val_evaluation_refused_without_a_validation_split(tiny_prepared):
    x, y = random_subset(tiny_prepared.x_train, tiny_prepared.y_train, 10, 1, seed=0)
    with pytest.raises(PadistillError, match="validation split") as e:
        evaluate_set(x, y, 0.01, tiny_prepared, tiny_prepared.config, split="val", net="convnet-2", epochs=0)
    assert "\n" not in str(e.value)
    with pytest.raises(PadistillError, match="split"):
        evaluate_set(x, y, 0.01, tiny_prepared, tiny_prepared.config, split="train")


def test_random_subset_is_seeded_class_contiguous_and_checked(prepared):
    x1, y1 = random_subset(prepared.x_train, prepared.y_train, 10, 3, seed=5)
    x2, y2 = random_subset(prepared.x_train, prepared.y_train, 10, 3, seed=5)
    x3, _ = random_subset(prepared.x_train, prepared.y_train, 10, 3, seed=6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(y1, torch.arange(10).repeat_interleave(3))
    with pytest.raises(PadistillError, match="per_class"):
        random_subset(prepared.x_train, prepared.y_train, 10, 10_000, seed=0)


def test_space_check_refuses_another_transform(prepared, tiny_prepared):
    check_space(prepared.pre, prepared.pre, "x")  # the same transform passes
    other = fit_preprocessor("zca", torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8),
                             dataset_fingerprint="not-digits")
    for bad in (other, tiny_prepared.pre):  # another dataset / digits without the held-out split
        with pytest.raises(PadistillError, match="model space") as e:
            check_space(bad, prepared.pre, "set/preprocess.pt")
        assert "\n" not in str(e.value) and "set/preprocess.pt" in str(e.value)
    normalize = fit_preprocessor("normalize", torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8),
                                 dataset_fingerprint=prepared.pre.dataset_fingerprint)
    with pytest.raises(PadistillError, match="normalize"):
        check_space(normalize, prepared.pre, "set")
    x, y = random_subset(prepared.x_train, prepared.y_train, 10, 1, seed=0)
    with pytest.raises(PadistillError, match="model space"):
        evaluate_set(x, y, 0.01, prepared, prepared.config, split="val", pre=other)


def test_cross_arch_table_shape_and_baseline(prepared):
    x, y = random_subset(prepared.x_train, prepared.y_train, 10, 2, seed=1)
    xr, yr = random_subset(prepared.x_train, prepared.y_train, 10, 2, seed=2)
    soft = torch.nn.functional.one_hot(y, 10).float() * 3
    sets = [EvalSet("distilled", x, soft, 0.02, "d", baseline="random"), EvalSet("random", xr, yr, 0.01, "r")]
    logs = []
    table = cross_arch(sets, ["convnet-2", "mlp"], prepared, prepared.config, epochs=0, runs=2, log=logs.append)
    assert list(table.rows) == ["distilled", "random"] and table.nets == ["convnet-2", "mlp"]
    for row in table.rows.values():
        assert set(row.results) == {"convnet-2", "mlp"} and all(r.n == 2 for r in row.results.values())
    imp = table.improvement("distilled")
    assert set(imp) == {"convnet-2", "mlp"}
    assert imp["mlp"] == pytest.approx(table.get("distilled", "mlp").mean - table.get("random", "mlp").mean)
    md = table.to_markdown().splitlines()
    assert md[0] == "| method | convnet-2 | mlp | avg |" and len(md) == 2 + 2 + 1  # header, rule, 2 rows, ↑ row
    assert md[-1].startswith("| ↑ distilled vs random |") and "(n=2)" in md[2]
    assert len(logs) == 4
    again = EvalTable.from_dict(table.to_dict())
    assert again.to_markdown() == table.to_markdown()
    # the options of the config's net apply to it, not to other nets
    assert table.get("distilled", "convnet-2").settings["net_options"] == {"width": 8}
    assert table.get("distilled", "mlp").settings["net_options"] == {}


def test_rows_share_network_seeds(prepared):
    """Paired comparison: run r of every row starts from the same initialisation."""
    x, y = random_subset(prepared.x_train, prepared.y_train, 10, 1, seed=1)
    sets = [EvalSet("a", x, y, 0.01), EvalSet("b", x, y, 0.01)]
    table = cross_arch(sets, ["mlp"], prepared, prepared.config, epochs=0, runs=2, log=lambda *_: None)
    assert table.get("a", "mlp").accs == table.get("b", "mlp").accs


def test_train_on_real_reports_mean_std_n(prepared):
    logs = []
    res = train_on_real(prepared, prepared.config, per_class=3, epochs=1, runs=2, log=logs.append,
                        show_progress=False)
    assert isinstance(res, EvalResult) and res.n == 2 and res.settings["images"] == 30
    assert "(n=2)" in res.summary() and "3 random real images per class" in res.summary()
    assert logs and "lr 0.01" in logs[0]
