"""MTT / DATM / PAD replay_buffer_<n>.pt import and export (spec §1.6, §8.6)."""

import json

import pytest
import torch

from padistill.errors import PadistillError
from padistill.experts import ExpertStore
from padistill.experts.interop import buffer_files, export_replay_buffers, import_replay_buffers
from padistill.nets import build, param_layout

QUIET = dict(log=lambda *_: None)
TINY_NET = dict(net="convnet-2-w8", num_classes=10, channels=1, im_size=8)  # the tiny_experts fixture's net


def test_export_writes_the_reference_format(tmp_path, tiny_experts):
    store = ExpertStore(tiny_experts)
    files = export_replay_buffers(tiny_experts, tmp_path / "buf", per_file=1, **QUIET)
    assert [f.name for f in files] == ["replay_buffer_0.pt", "replay_buffer_1.pt"]
    model = build(**{k if k != "net" else "name": v for k, v in TINY_NET.items()})
    shapes = [p.shape for p in model.parameters()]
    for i, f in enumerate(files):
        buf = torch.load(f, weights_only=True)
        assert isinstance(buf, list) and len(buf) == 1
        traj = buf[0]
        assert isinstance(traj, list) and len(traj) == store.epochs + 1  # E+1 checkpoints
        for e, ckpt in enumerate(traj):
            assert isinstance(ckpt, list) and [t.shape for t in ckpt] == shapes
            assert all(t.dtype == torch.float32 for t in ckpt)
            assert torch.equal(torch.cat([t.reshape(-1) for t in ckpt]), store.checkpoint(i, e))
        # each tensor owns its storage: the file is about the size of the numbers, not 14x larger
        assert f.stat().st_size < 1.5 * 4 * store.layout.total * (store.epochs + 1) + 100_000


def test_round_trip_is_bit_exact(tmp_path, tiny_experts):
    export_replay_buffers(tiny_experts, tmp_path / "buf", per_file=10, **QUIET)
    assert len(buffer_files(tmp_path / "buf")) == 1
    out = import_replay_buffers(tmp_path / "buf", tmp_path / "imported", **TINY_NET, **QUIET)
    a, b = ExpertStore(tiny_experts), ExpertStore(out)
    assert len(a) == len(b) and a.epochs == b.epochs and a.layout == b.layout
    for i in range(len(a)):
        assert torch.equal(a.trajectory(i), b.trajectory(i))
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "experts" and m["status"] == "complete" and m["num"] == len(a)
    assert b.meta(0)["source"] == "replay_buffer_0.pt"
    # the imported folder works for distillation's loader (same check the distill stage makes)
    from padistill.utils.manifest import require_complete

    require_complete(out, "experts")
    # importing again reuses the folder
    logs = []
    import_replay_buffers(tmp_path / "buf", out, **TINY_NET, log=logs.append)
    assert any("reusing" in line for line in logs)


def test_files_are_read_in_numeric_order(tmp_path):
    for n in (10, 2, 0):
        torch.save([], tmp_path / f"replay_buffer_{n}.pt")
    (tmp_path / "other.pt").write_bytes(b"")
    assert [p.name for p in buffer_files(tmp_path)] == ["replay_buffer_0.pt", "replay_buffer_2.pt",
                                                        "replay_buffer_10.pt"]


def convnet3_buffer(num=1, epochs=1, seed=0):
    """A replay buffer with the real CIFAR-10 ConvNetD3 layout (14 tensors, P = 320,010)."""
    model = build("convnet", num_classes=10, channels=3, im_size=32, seed=seed)
    params = [p.detach() for p in model.parameters()]
    return [[[t + 0.01 * e for t in params] for e in range(epochs + 1)] for _ in range(num)]


def test_reference_convnet3_layout_imports(tmp_path):
    buf = convnet3_buffer(num=2, epochs=1)
    assert len(buf[0][0]) == 14 and sum(t.numel() for t in buf[0][0]) == 320_010
    (tmp_path / "src").mkdir()
    torch.save(buf, tmp_path / "src" / "replay_buffer_0.pt")
    out = import_replay_buffers(tmp_path / "src", tmp_path / "e", **QUIET)
    store = ExpertStore(out)
    assert len(store) == 2 and store.epochs == 1 and store.layout.total == 320_010
    layout = param_layout(build("convnet", num_classes=10, channels=3, im_size=32))
    assert torch.equal(store.checkpoint(1, 1), layout.flatten(buf[1][1]))


@pytest.mark.parametrize("breakage, message", [
    ("not_a_list", "expected a list of trajectories"),
    ("empty", "holds no trajectories"),
    ("checkpoint_not_list", "trajectory 0, checkpoint 1: expected a list of tensors"),
    ("one_checkpoint", "trajectory 0: 1 checkpoint"),
    ("missing_tensor", "checkpoint 0: 13 tensors, the net has 14"),
    ("wrong_shape", r"checkpoint 1, tensor 13 \(classifier.bias\): expected shape \[10\], found \[100\]"),
    ("int_tensor", r"tensor 0 \(features.0.weight\): expected a float tensor, found int64 tensor"),
    ("epochs_differ", "trajectory 1 has 2 epochs, earlier ones have 1"),
    ("nan", "contains NaN or Inf"),
])
def test_bad_buffers_give_one_line_errors(tmp_path, breakage, message):
    buf = convnet3_buffer(num=2, epochs=1)
    if breakage == "not_a_list":
        buf = {"trajectories": buf}
    elif breakage == "empty":
        buf = []
    elif breakage == "checkpoint_not_list":
        buf[0][1] = torch.zeros(3)
    elif breakage == "one_checkpoint":
        buf[0] = buf[0][:1]
    elif breakage == "missing_tensor":
        buf[0][0] = buf[0][0][:13]
    elif breakage == "wrong_shape":
        buf[0][1][13] = torch.zeros(100)
    elif breakage == "int_tensor":
        buf[0][0][0] = torch.zeros_like(buf[0][0][0], dtype=torch.int64)
    elif breakage == "epochs_differ":
        buf[1].append(buf[1][-1])
    else:
        buf[0][1][5] = torch.full_like(buf[0][1][5], float("nan"))
    src = tmp_path / "src"
    src.mkdir()
    torch.save(buf, src / "replay_buffer_0.pt")
    with pytest.raises(PadistillError, match=message) as err:
        import_replay_buffers(src, tmp_path / "e", **QUIET)
    assert "\n" not in str(err.value) and "replay_buffer_0.pt" in str(err.value)


def test_wrong_net_and_unsafe_or_missing_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(convnet3_buffer(), src / "replay_buffer_0.pt")
    with pytest.raises(PadistillError, match="expected shape .*wrong --net"):
        import_replay_buffers(src, tmp_path / "e1", net="convnet", num_classes=100, **QUIET)
    (src / "replay_buffer_1.pt").write_bytes(b"garbage")
    with pytest.raises(PadistillError, match="replay_buffer_1.pt: cannot read replay buffer"):
        import_replay_buffers(src, tmp_path / "e2", **QUIET)
    with pytest.raises(PadistillError, match="no replay_buffer_<n>.pt files"):
        import_replay_buffers(tmp_path / "e2", tmp_path / "e3", **QUIET)
    with pytest.raises(PadistillError, match="not found"):
        import_replay_buffers(tmp_path / "missing", tmp_path / "e4", **QUIET)
    with pytest.raises(PadistillError, match="per-file must be >= 1"):
        export_replay_buffers(tmp_path / "e2", tmp_path / "x", per_file=0, **QUIET)


def test_cli_buffers_round_trip(tmp_path, tiny_experts, capsys):
    from padistill.cli import main

    assert main(["buffers", "export", str(tiny_experts), str(tmp_path / "buf"), "--per-file", "1"]) == 0
    assert main(["buffers", "import", str(tmp_path / "buf"), str(tmp_path / "imp"), "--net", "convnet-2-w8",
                 "--channels", "1", "--im-size", "8"]) == 0
    assert torch.equal(ExpertStore(tmp_path / "imp").trajectory(1), ExpertStore(tiny_experts).trajectory(1))
    assert main(["buffers", "import", str(tmp_path / "buf"), str(tmp_path / "bad"), "--num-classes", "100"]) == 2
    # importing into a folder that holds another run is refused, and replaced with --overwrite
    assert main(["buffers", "import", str(tmp_path / "buf"), str(tiny_experts), "--net", "convnet-2-w8",
                 "--channels", "1", "--im-size", "8"]) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imp").iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["buffers", "import", str(tmp_path / "buf"), str(tmp_path / "imp"), "--net", "convnet-2-w8",
                 "--channels", "1", "--im-size", "8", "--per-file", "3"]) == 0  # same import: reused
    assert "reusing it" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imp").iterdir() if p.is_file()} == stamps  # no write
    other = tmp_path / "other"
    export_replay_buffers(tiny_experts, other, per_file=1, **QUIET)
    (other / "replay_buffer_1.pt").unlink()
    assert main(["buffers", "import", str(other), str(tmp_path / "imp"), "--net", "convnet-2-w8",
                 "--channels", "1", "--im-size", "8", "--overwrite"]) == 0
    assert len(ExpertStore(tmp_path / "imp")) == 1
