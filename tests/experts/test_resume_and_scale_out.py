"""`padistill experts` as a real process: SIGKILL mid-run + re-run == uninterrupted run (bytes), and torchrun
with 2 CPU processes (gloo) == the single-process run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import helpers
from padistill.config import dump_yaml
from padistill.experts import ExpertStore

NUM, EPOCHS = 3, 6
OVERRIDES = ("experts.optimizer=gsam", f"experts.num={NUM}", f"experts.epochs={EPOCHS}", "net.options={width: 16}",
             "experts.schedule.enabled=true", "experts.schedule.add_end_epoch=2", "experts.schedule.rm_epoch_first=3",
             "experts.schedule.rm_epoch_second=4", "scores.models=3", "scores.epochs=1", "scores.batch=128")


def env():
    # Same thread count in every process (torchrun's default is 1 too): float reductions then agree bit for bit.
    return {**os.environ, "PADISTILL_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PADISTILL_BACKEND": "gloo"}


def experts_cmd(config, scores, out):
    return ["-m", "padistill", "experts", "--config", str(config), "--scores", str(scores), "--out", str(out)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_prepared):
    """Config file, a scores folder and the reference (uninterrupted, single-process) run."""
    root = tmp_path_factory.mktemp("resume")
    cfg = helpers.tiny_config(*OVERRIDES)
    config = root / "tiny.yaml"
    config.write_text(dump_yaml(cfg))
    scores = root / "scores"
    res = subprocess.run([sys.executable, "-m", "padistill", "scores", "--config", str(config), "--out", str(scores)],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = root / "reference"
    res = subprocess.run([sys.executable, *experts_cmd(config, scores, ref)], env=env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return config, scores, ref


def assert_same_trajectories(a, b):
    sa, sb = ExpertStore(a), ExpertStore(b)
    assert len(sa) == len(sb) == NUM
    for i in range(NUM):
        assert (a / f"expert_{i:04d}.pt").is_file()
        assert torch.equal(sa.trajectory(i), sb.trajectory(i)), f"expert {i} differs"
        assert sa.trajectory(i).numpy().tobytes() == sb.trajectory(i).numpy().tobytes()


def run_until(cmd, partial, timeout=240):
    """Start `cmd`, SIGKILL it as soon as `partial` exists (i.e. in the middle of the next epoch)."""
    proc = subprocess.Popen([sys.executable, *cmd], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not partial.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no partial state appeared")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_kill_and_rerun_gives_the_same_bytes(tmp_path, setup):
    config, scores, ref = setup
    out = tmp_path / "killed"
    cmd = experts_cmd(config, scores, out)
    run_until(cmd, out / "partial" / "expert_0000.pt")  # killed during expert 0's second epoch
    assert not (out / "expert_0000.pt").exists()
    run_until(cmd, out / "partial" / "expert_0001.pt")  # resumed expert 0, killed inside expert 1
    assert (out / "expert_0000.pt").is_file() and not (out / "expert_0002.pt").exists()
    res = subprocess.run([sys.executable, *cmd], env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming expert 1 after epoch" in res.stdout
    assert_same_trajectories(out, ref)
    assert not (out / "partial").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == NUM * EPOCHS  # rebuilt from the experts' meta: no duplicate epochs from the kills
    assert all(json.loads(line)["seconds"] is not None for line in lines)  # wall times kept in the log...
    for k in range(NUM):  # ...and out of the expert files, which are the same bytes as the uninterrupted run's
        name = f"expert_{k:04d}.pt"
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_torchrun_two_processes_equal_the_single_process_run(tmp_path, setup):
    config, scores, ref = setup
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *experts_cmd(config, scores, out)]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_trajectories(out, ref)
    import json

    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["key"] == json.loads((ref / "manifest.json").read_text())["key"]


def test_torchrun_scores_equal_the_single_process_scores(tmp_path, setup):
    """Ranks train scoring models r, r + world, ...; rank 0 averages them: same bytes as one process."""
    config, scores, _ = setup
    out = tmp_path / "scores"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "padistill",
           "scores", "--config", str(config), "--out", str(out)]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("scores.pt", "all_scores.pt", "ordering.pt"):
        assert (out / name).read_bytes() == (scores / name).read_bytes(), name
