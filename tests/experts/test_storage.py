"""ExpertStore: lazy (memory-mapped) start/target pairs and one-line errors for bad folders."""

import pytest
import torch

from padistill.errors import PadistillError
from padistill.experts.storage import LAYOUT_FILE, ExpertStore, save_expert
from padistill.utils.io import atomic_save, atomic_write_json


def make_folder(path, epochs=3, P=6, num=2, dtype=torch.float32):
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / LAYOUT_FILE, {"names": ["w", "b"], "shapes": [[2, P // 2 - 1], [2]]})
    for k in range(num):
        rows = torch.arange((epochs + 1) * P, dtype=torch.float32).reshape(epochs + 1, P) + 1000 * k
        save_expert(path, k, rows.to(dtype), {"expert": k})
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_pairs_checkpoints_and_meta(tmp_path):
    store = ExpertStore(make_folder(tmp_path / "e"))
    assert len(store) == 2 and store.epochs == 3 and store.layout.total == 6
    start, target = store.pair(1, 1, 2)
    assert start.tolist() == [1006 + i for i in range(6)] and target.tolist() == [1018 + i for i in range(6)]
    assert store.checkpoint(0, -1).tolist() == list(range(18, 24))
    assert store.meta(1) == {"expert": 1}
    with pytest.raises(PadistillError, match="epoch 4 out of range 0..3"):
        store.checkpoint(0, 4)
    assert len(ExpertStore(tmp_path / "e", max_experts=1)) == 1


def test_reading_a_pair_maps_the_file_instead_of_reading_it(tmp_path):
    """A 120 MB expert file: opening it and reading two checkpoints must not pull the file into memory."""
    P, E = 1_500_000, 19
    folder = tmp_path / "big"
    folder.mkdir()
    atomic_write_json(folder / LAYOUT_FILE, {"names": ["w"], "shapes": [[P]]})
    rows = torch.empty(E + 1, P)
    for e in range(E + 1):
        rows[e].fill_(float(e))
    save_expert(folder, 0, rows, {})
    del rows
    before = rss_mb()
    store = ExpertStore(folder)
    a, b = store.pair(0, 3, 2)
    grown = rss_mb() - before
    assert float(a[0]) == 3.0 and float(b[-1]) == 5.0
    assert grown < 40, f"reading one pair grew RSS by {grown:.0f} MB for a {4 * P * (E + 1) / 2**20:.0f} MB file"


@pytest.mark.parametrize("breakage, message", [
    ("no_layout", "expert layout not found"),
    ("wrong_P", r"params must be float32/float16 \[E\+1, 6\]"),
    ("wrong_dtype", "params must be float32/float16"),
    ("epochs_differ", "has 2 epochs, other experts have 3"),
    ("not_a_dict", "not an expert file"),
    ("garbage", "cannot read expert trajectory"),
])
def test_bad_folders_give_one_line_errors(tmp_path, breakage, message):
    folder = make_folder(tmp_path / "e")
    bad = folder / "expert_0001.pt"
    if breakage == "no_layout":
        (folder / LAYOUT_FILE).unlink()
    elif breakage == "wrong_P":
        save_expert(folder, 1, torch.zeros(4, 7), {})
    elif breakage == "wrong_dtype":
        save_expert(folder, 1, torch.zeros(4, 6, dtype=torch.float64), {})
    elif breakage == "epochs_differ":
        save_expert(folder, 1, torch.zeros(3, 6), {})
    elif breakage == "not_a_dict":
        atomic_save([torch.zeros(4, 6)], bad)
    else:
        bad.write_bytes(b"\x00garbage")
    with pytest.raises(PadistillError, match=message) as err:
        store = ExpertStore(folder)
        store.checkpoint(1, 0)
    assert "\n" not in str(err.value)


def test_missing_folder_or_files(tmp_path):
    with pytest.raises(PadistillError, match="experts folder not found"):
        ExpertStore(tmp_path / "nope")
    with pytest.raises(PadistillError, match="no expert_XXXX.pt files"):
        ExpertStore(tmp_path)


def test_non_finite_rows_are_refused_when_read(tmp_path):
    """Rows are checked as they are read (a folder can be GBs, memory-mapped): the error names file and epoch."""
    folder = make_folder(tmp_path / "e")
    rows = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    rows[2, 1], rows[3, 5] = float("nan"), float("inf")
    save_expert(folder, 1, rows.half(), {})  # float16 rows are checked too
    store = ExpertStore(folder)
    for call, epoch in ((lambda: store.checkpoint(1, 2), 2), (lambda: store.checkpoint(1, -1), 3),
                        (lambda: store.pair(1, 1, 1), 2)):
        with pytest.raises(PadistillError, match=rf"expert_0001\.pt: epoch {epoch} parameters contain NaN or Inf"):
            call()
    assert store.pair(1, 0, 1)[1].tolist() == list(range(6, 12))  # finite rows of that file still read
    assert torch.isfinite(store.checkpoint(0, -1)).all()


def test_buffers_export_refuses_non_finite_experts(tmp_path):
    """`buffers export` reads whole trajectories: a NaN epoch is named instead of being handed on."""
    from padistill.experts.interop import export_replay_buffers

    folder = make_folder(tmp_path / "e")
    rows = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    rows[2, 1] = float("nan")
    save_expert(folder, 1, rows, {})
    with pytest.raises(PadistillError, match=r"expert_0001\.pt: epoch 2 parameters contain NaN or Inf"):
        export_replay_buffers(folder, tmp_path / "buf", log=lambda *_: None)


@pytest.mark.parametrize("n", [0, -1])
def test_max_experts_below_one_is_refused(tmp_path, n):
    """-1 used to drop the last expert (files[:-1]), 0 to claim the folder held no expert files."""
    with pytest.raises(PadistillError, match=rf"max_experts must be a positive integer or None; got {n}"):
        ExpertStore(make_folder(tmp_path / "e"), max_experts=n)
