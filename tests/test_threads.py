"""The thread policy: where the count comes from, cgroup/affinity limits, and what the CLI prints."""

from __future__ import annotations

import pytest
import torch

from padistill.cli import main
from padistill.errors import PadistillError
from padistill.utils import threads


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("PADISTILL_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_applied", None)
    yield monkeypatch
    torch.set_num_threads(before)


def test_order_flag_then_padistill_env_then_omp_env_then_default(clean_env):
    clean_env.setattr(threads, "default_threads", lambda: (7, "default"))
    assert threads.choose_threads() == (7, "default")
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads() == (3, "OMP_NUM_THREADS")
    clean_env.setenv("PADISTILL_THREADS", "2")
    assert threads.choose_threads() == (2, "PADISTILL_THREADS")
    assert threads.choose_threads(5) == (5, "--threads")


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_counts_are_one_line_errors(clean_env, bad):
    clean_env.setenv("PADISTILL_THREADS", bad)
    with pytest.raises(PadistillError, match="PADISTILL_THREADS: expected a whole number of threads >= 1"):
        threads.choose_threads()


def test_cgroup_v2_and_v1_quotas(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(v1) == 1.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert threads.cgroup_cpu_limit(v1) is None
    assert threads.cgroup_cpu_limit(tmp_path / "missing") is None


def test_default_is_the_smaller_of_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    (tmp_path / "cpu.max").write_text("200000 100000\n")  # docker --cpus 2
    n, why = threads.default_threads(tmp_path)
    assert n == 2 and "quota" in why
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert threads.default_threads(tmp_path)[0] == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.default_threads(tmp_path)[0] == 8
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 1)  # taskset -c 0 on a big machine
    (tmp_path / "cpu.max").write_text("400000 100000\n")
    assert threads.default_threads(tmp_path)[0] == 1


def test_affinity_counts_only_allowed_cpus():
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert threads.affinity_cpus() == len(os.sched_getaffinity(0))


def test_apply_sets_torch_and_says_why(clean_env):
    lines: list[str] = []
    assert threads.apply_threads(1, log=lines.append) == 1
    assert torch.get_num_threads() == 1
    assert lines == ["threads: 1 (--threads; change with --threads N or PADISTILL_THREADS)"]
    threads.apply_threads(1, log=lines.append)  # same count: nothing to do, nothing printed
    assert len(lines) == 1


def test_cli_prints_the_choice_and_refuses_bad_flag(clean_env, tmp_path, capsys):
    clean_env.setenv("PADISTILL_THREADS", "1")
    assert main(["eval", str(tmp_path / "nothing")]) == 2  # fails later, but the policy line comes first
    out = capsys.readouterr()
    assert "threads: 1 (PADISTILL_THREADS" in out.out
    assert main(["eval", str(tmp_path / "nothing"), "--threads", "0"]) == 2
    assert "--threads: expected a whole number of threads >= 1, got 0" in capsys.readouterr().err


def test_sweep_jobs_divide_the_process_budget(clean_env):
    from padistill.sweep.run import default_threads

    clean_env.setenv("PADISTILL_THREADS", "4")
    assert default_threads(2) == 2 and default_threads(3) == 1 and default_threads(8) == 1
    clean_env.setenv("PADISTILL_THREADS", "1")  # never more than the caller allowed
    assert default_threads(2) == 1
