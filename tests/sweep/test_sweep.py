"""`padistill sweep`: shared stages (one experts folder per experts key, each expert trained once), paired evaluation
seeds, the table equal to the cells' evaluations, --reuse, resume after a kill, a changed spec refused."""

import json
import math

import pytest
import torch
import yaml

from helpers import TINY_OVERRIDES, killed_at
from padistill.config import parse_override
from padistill.errors import PadistillError
from padistill.sweep import load_spec, run_sweep
from padistill.sweep.run import eval_key
from padistill.utils.io import load_tensors

TINY = {".".join(k): v for k, v in (parse_override(t) for t in TINY_OVERRIDES)}
TINY.update({"eval.runs": 2, "eval.nets": ["convnet-2"], "distill.iterations": 2, "scores.models": 1,
             "scores.epochs": 1,
             "experts.schedule": {"init_ratio": 0.5, "add_end_epoch": 1, "rm_epoch_first": 2, "rm_epoch_second": 3}})
CELLS = {"datm": {}, "fiem": {"distill.select.ratio": 0.5}, "fiex": {"experts.schedule.enabled": True}}


def write_spec(path, cells=None, **top):
    spec = {"base": "pad", "name": "tiny", "set": TINY, "cells": CELLS if cells is None else cells,
            "baseline": "datm", **top}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep(spec_path, out, **kw):
    return run_sweep(load_spec(str(spec_path)), out=out, log=lambda *_: None, show_progress=False, **kw)


class Counter:
    """Counts calls of the stage functions the sweep reaches (an expert trained, a set distilled, ...)."""

    def __init__(self, mp):
        import padistill.distill
        import padistill.evaluate
        import padistill.experts.train as train

        self.n = {"expert": 0, "distill": 0, "eval": 0}
        real_expert, real_distill, real_eval = train.train_expert, padistill.distill.run_distill, \
            padistill.evaluate.run_eval

        def expert(*a, **k):
            self.n["expert"] += 1
            return real_expert(*a, **k)

        def distill(*a, **k):
            self.n["distill"] += 1
            return real_distill(*a, **k)

        def evaluate(*a, **k):
            self.n["eval"] += 1
            return real_eval(*a, **k)

        mp.setattr(train, "train_expert", expert)
        mp.setattr(padistill.distill, "run_distill", distill)
        mp.setattr(padistill.evaluate, "run_eval", evaluate)


@pytest.fixture(scope="module")
def done(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("sweep")
    spec = write_spec(root / "tiny.yaml")
    with pytest.MonkeyPatch.context() as mp:
        c = Counter(mp)
        sweep(spec, root / "s1")
    return root, spec, c.n


def test_stages_are_shared_and_nothing_is_trained_twice(done):
    root, _, n = done
    s1 = root / "s1"
    experts = sorted(p.name for p in (s1 / "stages").iterdir() if p.name.startswith("experts-"))
    scores = [p for p in (s1 / "stages").iterdir() if p.name.startswith("scores-")]
    assert len(experts) == 2 and len(scores) == 1  # plain (datm, fiem) + scheduled (fiex); scores for fiex only
    assert n["expert"] == 2 * TINY["experts.num"]  # two experts folders, each expert trained once
    assert n["distill"] == 3 and n["eval"] == 3
    rec = json.loads((s1 / "cells" / "fiem" / "cell.json").read_text())
    other = json.loads((s1 / "cells" / "datm" / "cell.json").read_text())
    assert rec["stages"]["experts"] == other["stages"]["experts"]
    for cell in CELLS:  # ordinary run folders
        assert (s1 / "cells" / cell / "distill" / "images.pt").is_file()
        assert json.loads((s1 / "cells" / cell / "eval" / "manifest.json").read_text())["status"] == "complete"


def test_table_equals_the_cells_evaluations_and_is_paired(done):
    root, _, _ = done
    s1 = root / "s1"
    res = json.loads((s1 / "results.json").read_text())
    per_cell = {}
    for row in res["cells"]:
        ev = json.loads((s1 / "cells" / row["cell"] / "eval" / "results.json").read_text())
        dist = next(r for r in ev["table"]["rows"] if r["name"] == "distilled")["results"]["convnet-2"]
        s = row["nets"]["convnet-2"]
        assert s["mean"] == pytest.approx(dist["mean"], abs=1e-12) and s["std"] == pytest.approx(dist["std"], abs=1e-12)
        assert s["n"] == dist["n"] == 2
        per_cell[row["cell"]] = dist
        # paired: the same evaluation seed in every cell, whatever its distillation settings
        assert ev["seed"] == 0 and dist["settings"]["seed"] == 0
    for cell in ("fiem", "fiex"):
        d = [a - b for a, b in zip(per_cell[cell]["accs"], per_cell["datm"]["accs"])]
        diff = next(r for r in res["cells"] if r["cell"] == cell)["nets"]["convnet-2"]["diff"]
        assert diff["mean"] == pytest.approx(sum(d) / 2, abs=1e-12)
        sd = math.sqrt(sum((x - sum(d) / 2) ** 2 for x in d))  # ddof 1 with n = 2
        half = 12.706204736174705 * sd / math.sqrt(2)  # t(0.975, 1)
        assert diff["lo"] == pytest.approx(diff["mean"] - half, abs=1e-9)
        assert diff["hi"] == pytest.approx(diff["mean"] + half, abs=1e-9)
    assert res["random"] is not None  # the random real subset, evaluated once (in the baseline cell)
    assert sum("random" in {r["name"] for r in json.loads(
        (s1 / "cells" / c / "eval" / "results.json").read_text())["table"]["rows"]} for c in CELLS) == 1
    csv = (s1 / "table.csv").read_text().splitlines()
    assert csv[0].startswith("cell,net,mean") and len(csv) == 1 + 3 + 1
    assert "fiem" in (s1 / "table.md").read_text()


def test_eval_key_is_the_one_the_eval_stage_writes(done):
    from padistill.context import prepare

    root, spec, _ = done
    cell = load_spec(str(spec)).cell("fiem").replicates[0]
    folder = root / "s1" / "cells" / "fiem"
    written = json.loads((folder / "eval" / "manifest.json").read_text())["key"]
    assert eval_key(cell.config, prepare(cell.config, log=lambda *_: None).fingerprint(), folder / "distill") == written


def test_rerun_reuses_everything(done, monkeypatch):
    root, spec, _ = done
    c = Counter(monkeypatch)
    sweep(spec, root / "s1")
    assert c.n == {"expert": 0, "distill": 0, "eval": 0}  # every folder complete with the same key


def test_reuse_copies_every_stage_from_another_sweep(done, tmp_path, monkeypatch):
    root, spec, _ = done
    c = Counter(monkeypatch)
    sweep(spec, tmp_path / "s2", reuse=[root / "s1"])
    assert c.n == {"expert": 0, "distill": 0, "eval": 0}
    a = json.loads((root / "s1" / "results.json").read_text())["cells"]
    b = json.loads((tmp_path / "s2" / "results.json").read_text())["cells"]
    assert [r["nets"] for r in a] == [r["nets"] for r in b]
    tasks = json.loads((tmp_path / "s2" / "sweep.json").read_text())["tasks"]
    assert {t["outcome"] for t in tasks.values()} == {"copied"}


def test_changed_spec_is_refused_cell_by_cell(done, tmp_path):
    root, _, _ = done
    cells = dict(CELLS, fiem={"distill.select.ratio": 0.25})
    spec = write_spec(tmp_path / "changed.yaml", cells=cells)
    with pytest.raises(PadistillError, match=r"cell 'fiem'.*distill\.select.*ratio: 0\.5 -> 0\.25.*--overwrite") as e:
        sweep(spec, root / "s1")
    assert "'datm'" not in str(e.value) and "'fiex'" not in str(e.value)


def test_killed_sweep_resumes_to_the_same_bytes(done, tmp_path):
    root, spec, _ = done
    with killed_at(1), pytest.raises(KeyboardInterrupt):
        sweep(spec, tmp_path / "s3", reuse=[root / "s1" / "stages"])  # stages copied; distillation killed
    assert not (tmp_path / "s3" / "cells" / "datm" / "distill" / "images.pt").exists()
    sweep(spec, tmp_path / "s3")
    for cell in CELLS:
        a = load_tensors(root / "s1" / "cells" / cell / "distill" / "images.pt", "images")
        b = load_tensors(tmp_path / "s3" / "cells" / cell / "distill" / "images.pt", "images")
        assert torch.equal(a, b)


def test_distill_seeds_vary_the_set_but_not_the_evaluation_seeds(tmp_path):
    spec = write_spec(tmp_path / "seeds.yaml", cells={"datm": {}}, distill_seeds=2)
    sweep(spec, tmp_path / "s")
    a, b = tmp_path / "s" / "cells" / "datm", tmp_path / "s" / "cells" / "datm" / "seed-1"
    ia, ib = (load_tensors(x / "distill" / "images.pt", "images") for x in (a, b))
    assert not torch.equal(ia, ib)
    ea, eb = (json.loads((x / "eval" / "results.json").read_text()) for x in (a, b))
    sa = next(r for r in ea["table"]["rows"] if r["name"] == "distilled")["results"]["convnet-2"]["settings"]
    sb = next(r for r in eb["table"]["rows"] if r["name"] == "distilled")["results"]["convnet-2"]["settings"]
    assert sa["seed"] == sb["seed"] and sa["seed_tag"] == sb["seed_tag"]
    res = json.loads((tmp_path / "s" / "results.json").read_text())
    s = res["cells"][0]["nets"]["convnet-2"]
    assert s["n"] == 4 and s["seeds"] == 2 and len(s["seed_means"]) == 2
    assert json.loads((b / "cell.json").read_text())["distill_seed"] == 1


def test_plot_and_html_page(done):
    root, _, _ = done
    s1 = root / "s1"
    assert (s1 / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (s1 / "report" / "index.html").read_text()
    assert page.count("<figure") == len(CELLS) and "data:image/png;base64," in page
    for cell in CELLS:
        assert f"<figcaption>{cell}<br>" in page and (s1 / "report" / f"cell-{cell}.png").is_file()
    assert "<table>" in page and "Δ vs datm" in page


def test_a_cell_not_started_yet_may_change(tmp_path):
    from padistill.sweep.run import CELL_FILE

    spec = write_spec(tmp_path / "a.yaml", cells={"datm": {}})
    with pytest.MonkeyPatch.context() as mp:  # stop before any stage: only the cell records exist
        mp.setattr("padistill.sweep.run.run_task", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            sweep(spec, tmp_path / "s")
    assert (tmp_path / "s" / "cells" / "datm" / CELL_FILE).is_file()
    changed = write_spec(tmp_path / "b.yaml", cells={"datm": {"distill.select.ratio": 0.5}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("padistill.sweep.run.run_task", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):  # accepted (no refusal): it got as far as the first stage
            sweep(changed, tmp_path / "s")
    rec = json.loads((tmp_path / "s" / "cells" / "datm" / CELL_FILE).read_text())
    assert rec["config"]["distill"]["select"]["ratio"] == 0.5
