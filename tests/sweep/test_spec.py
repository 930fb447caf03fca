"""Sweep specs: bad specs refused before any work (naming the cell and the key), the shipped presets, the table's
statistics, and the CPU presets sharing the scores / experts stage keys of cpu/cifar10-ipc1."""

import math

import pytest
import yaml

from padistill.config import load_config
from padistill.errors import PadistillError
from padistill.sweep import list_sweep_presets, load_spec
from padistill.sweep.spec import sweep_preset_header, sweep_preset_path
from padistill.sweep.stats import paired_difference, summarize, t_quantile


def spec_file(tmp_path, **top):
    spec = {"base": "pad", "cells": {"a": {}, "b": {"distill.ipc": 2}}, "baseline": "a"}
    spec.update(top)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.mark.parametrize("top, message", [
    ({"cells": {"a": {}, "b": {"distill.ipcc": 2}}}, r"cell 'b'.*unknown config key 'distill\.ipcc'.*distill\.ipc"),
    ({"cells": {"a": {}, "b": {"distill.ipc": "ten"}}}, r"cell 'b'.*'distill\.ipc' expects int, got 'ten'"),
    ({"cells": {"a": {}, "b": {"distill.select.ratio": 1.5}}}, r"cell 'b'.*distill\.select\.ratio.*\[0, 1\]"),
    ({"cells": {"a": {}, "b": {"distill.select.mode": "deep", "distill.method": "dm"}}},
     r"cell 'b'.*select\.mode' deep is defined for trajectory matching only"),
    ({"baseline": "c"}, r"baseline 'c' is not a cell of this sweep \(cells: a, b\)"),
    ({"baseline": None}, r"'baseline' is required"),
    ({"cells": None, "grid": {}}, r"'grid' is empty"),
    ({"cells": None, "grid": {"distill.ipc": []}}, r"grid key 'distill\.ipc' needs a non-empty list"),
    ({"grid": {"distill.ipc": [1, 2]}}, r"either 'cells'.*or 'grid'.*not both"),
    ({"cells": {}}, r"'cells' must be a non-empty mapping"),
    ({"cells": {"a": {}, "b/c": {}}}, r"cell name 'b/c'"),
    ({"cels": {}}, r"unknown spec key 'cels' \(did you mean 'cells'\?\)"),
    ({"base": "pad/nope"}, r"unknown preset 'pad/nope'"),
    ({"distill_seeds": 0}, r"'distill_seeds' must be an integer >= 1"),
    ({"set": {"eval.runs": 0}}, r"cell 'a'.*'eval\.runs' must be >= 1"),
])
def test_bad_specs_are_refused_naming_cell_and_key(tmp_path, top, message):
    with pytest.raises(PadistillError, match=message):
        load_spec(spec_file(tmp_path, **top))


def test_grid_cells_and_precedence(tmp_path):
    spec = load_spec(spec_file(tmp_path, cells=None, grid={"distill.select.ratio": [0, 0.25], "distill.ipc": [1, 2]},
                               baseline="ratio=0,ipc=1", set={"distill.iterations": 7, "distill.ipc": 5}),
                     cli_overrides=["distill.iterations=9"])
    assert [c.name for c in spec.cells] == ["ratio=0,ipc=1", "ratio=0,ipc=2", "ratio=0.25,ipc=1", "ratio=0.25,ipc=2"]
    cfg = spec.cell("ratio=0.25,ipc=2").config
    assert cfg.distill.select.ratio == 0.25 and cfg.distill.ipc == 2 and cfg.distill.iterations == 9
    assert spec.grid_keys == ["distill.select.ratio", "distill.ipc"]
    # the random real subset is evaluated in the baseline cell only
    assert [c.config.eval.baseline for c in spec.cells] == [True, False, False, False]


def test_distill_seeds_give_each_cell_its_repeats(tmp_path):
    spec = load_spec(spec_file(tmp_path, distill_seeds=3))
    reps = spec.cell("b").replicates
    assert [r.config.distill.seed for r in reps] == [None, 1, 2]
    assert [r.folder for r in reps] == ["cells/b", "cells/b/seed-1", "cells/b/seed-2"]
    assert {r.config.seed for r in reps} == {0}  # the evaluation keeps the run's seed: paired across repeats
    with pytest.raises(PadistillError, match=r"cell 'b' sets distill\.seed"):
        load_spec(spec_file(tmp_path, cells={"a": {}, "b": {"distill.seed": 4}}, distill_seeds=2))


@pytest.mark.parametrize("name", list_sweep_presets())
def test_shipped_presets_resolve_and_say_what_they_measure(name):
    spec = load_spec(preset=name)
    header = sweep_preset_header(sweep_preset_path(name))
    assert f"padistill sweep --preset {name}" in header
    assert "paper" in header.lower() and ("cpu" not in name or "CPU-scale" in header)
    assert spec.baseline in [c.name for c in spec.cells]


@pytest.mark.parametrize("name", [n for n in list_sweep_presets() if n.startswith("cpu/modules")])
def test_cpu_module_presets_share_the_prebuilt_scores_and_experts_keys(name):
    """The cells' scores / experts settings are those of `padistill scores|experts --preset cpu/cifar10-ipc1`
    (with and without experts.schedule.enabled=false), so those folders are reused, never retrained."""
    from padistill.experts.train import experts_settings
    from padistill.scores.stage import scores_settings

    plain = load_config(preset="cpu/cifar10-ipc1", overrides=["experts.schedule.enabled=false"])
    fiex = load_config(preset="cpu/cifar10-ipc1")
    spec = load_spec(preset=name)
    for cell in spec.cells:
        cfg = cell.config
        assert cfg.seed == fiex.seed and cfg.data == fiex.data
        want = fiex if cfg.experts.schedule.enabled else plain
        assert experts_settings(cfg) == experts_settings(want), cell.name
        assert scores_settings(cfg) == scores_settings(fiex), cell.name
    names = [c.name for c in spec.cells]
    assert {"mtt", "datm", "datm+fiex", "datm+fiem", "pad"} <= set(names) and spec.baseline == "datm"


def test_t_quantile_and_paired_interval():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-6)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451, rel=1e-6)
    assert t_quantile(0.975, 9) == pytest.approx(2.2621572, rel=1e-6)
    cell, base = [[0.50, 0.52, 0.49, 0.51, 0.53]], [[0.48, 0.49, 0.47, 0.50, 0.50]]
    d = [0.02, 0.03, 0.02, 0.01, 0.03]
    m = sum(d) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 4)
    r = paired_difference(cell, base)
    assert r["n"] == 5 and r["unit"] == "eval runs" and r["mean"] == pytest.approx(m)
    assert r["hi"] - r["mean"] == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)
    # several distillation seeds: one difference per seed (mean over its paired runs), t with K - 1 dof
    r2 = paired_difference([[0.5, 0.6], [0.7, 0.7], [0.4, 0.6]], [[0.4, 0.4], [0.5, 0.6], [0.5, 0.5]])
    assert r2["n"] == 3 and r2["unit"] == "distill seeds" and r2["mean"] == pytest.approx((0.15 + 0.15 + 0.0) / 3)
    s = summarize([[0.5, 0.6], [0.7, 0.7]])
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.625) and s["seed_means"] == pytest.approx([0.55, 0.7])
    one = paired_difference([[0.5]], [[0.4]])
    assert one["n"] == 1 and math.isnan(one["lo"])


def test_unset_distill_seed_keeps_the_distill_stage_key():
    """distill.seed left unset is not in the distill settings: folders made before the field existed are reused."""
    from padistill.distill.loop import distill_settings

    assert "seed" not in distill_settings(load_config(preset="pad"))["distill"]
    assert distill_settings(load_config(preset="pad", overrides=["distill.seed=3"]))["distill"]["seed"] == 3
