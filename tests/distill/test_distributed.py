"""torchrun scale-out of distillation: each rank matches its own expert segment and the image, label
and lr gradients are averaged across ranks (gloo on CPU, 2 processes)."""

import os
import subprocess
import sys

import torch

from helpers import tiny_config
from padistill.config import dump_yaml
from padistill.utils.io import load_tensors


def emulate_two_ranks(cfg, prepared, experts_dir):
    """What two ranks should compute, done in one process: average the two ranks' gradients."""
    from padistill.distill.loop import _initial_set, build_step

    s0, model, layout, store = build_step(cfg, prepared, experts_dir, None, 20, 0, 2, print)
    s1, *_ = build_step(cfg, prepared, experts_dir, None, 20, 1, 2, print)
    syn = _initial_set(cfg, prepared, model, layout, store, lambda *_: None)
    for it in range(cfg.distill.iterations):
        got = []
        for step in (s0, s1):
            step(it, syn, got.append)
        avg = {k: (got[0][k] + got[1][k]) / 2 for k in got[0]}
        syn.apply(avg)
    return syn


# Inherited variables that would steer torchrun or the ranks: torchrun reads PET_* as its own options, and a
# leftover RANK / MASTER_PORT / TORCHELASTIC_* (a test or a shell that set them) would point the ranks elsewhere.
_INHERITED = ("PET_", "TORCHELASTIC_", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
              "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE", "GLOO_")


def torchrun_env(tmp_path) -> dict:
    """The ranks' environment, independent of the host and of what ran before: loopback only (on Linux gloo
    then does not resolve the host name to pick its device), torchrun's temp files in the test's folder, one
    thread per rank. PADISTILL_* stay: the ranks must compute what this process computes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED)}
    env.update(PADISTILL_PROGRESS="0", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def test_torchrun_two_processes_average_gradients(tmp_path, tiny_prepared, tiny_experts):
    cfg = tiny_config()
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(dump_yaml(cfg))
    out = tmp_path / "dist"
    # --standalone binds its store to a free port itself (no port is guessed); --local-addr keeps the
    # rendezvous off the host's name resolution (socket.getfqdn(), a DNS query where the network is down).
    # The run took 36-49 s alone on 2 busy cores and 113 s inside a full suite at load 13; hence the wide limit.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--local-addr=127.0.0.1", "--max-restarts=0",
           "-m", "padistill", "distill", "--config", str(cfg_path), "--experts", str(tiny_experts),
           "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=torchrun_env(tmp_path), timeout=1200)
    assert res.returncode == 0, f"exit code {res.returncode}\n{res.stdout[-1500:]}\n{res.stderr[-3000:]}"
    syn = emulate_two_ranks(cfg, tiny_prepared, tiny_experts)
    assert torch.allclose(load_tensors(out / "images.pt"), syn.images.detach(), atol=1e-6)
    assert torch.allclose(load_tensors(out / "labels.pt"), syn.labels.detach(), atol=1e-6)
    assert torch.allclose(load_tensors(out / "lr.pt"), syn.syn_lr.detach(), atol=1e-9)
    # and it differs from the single-process run (each iteration saw two expert segments)
    single = tiny_config()
    from padistill.distill import run_distill

    one = run_distill(single, tiny_prepared, tmp_path / "one", experts_dir=tiny_experts, log=lambda *_: None,
                      show_progress=False)
    assert not torch.equal(load_tensors(one / "images.pt"), load_tensors(out / "images.pt"))
