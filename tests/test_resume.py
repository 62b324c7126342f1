"""Resume: kill -9 during task 2, continue, and get the uninterrupted run's results bit for bit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: a 2-task stream small enough for CI; task 2 (brain_age) long enough to be killed in
TINY = ["tasks.size=32", "tasks.n_train=4", "tasks.n_test=2", "backbone=vit3d_tiny", "backbone.weights=null",
        "backbone.num_layers=4", "train.progress_bar=false", "train.checkpoint_every_n_epochs=1",
        "train.checkpoint_min_interval_s=0", "train.max_steps=120", "strategy=lora"]


def _env(tmp_path: Path, cache: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLBENCH_CACHE": str(cache),
            "PYTHONHASHSEED": "0"}


def clbench(tmp_path: Path, cache: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "cl_bench.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path, cache),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path, cache), capture_output=True,
                          text=True, timeout=600)


def model_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "state.pt", map_location="cpu",
                      weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run (and the data cache it made)."""
    tmp = tmp_path_factory.mktemp("ref")
    cache = tmp / "cache"
    proc = clbench(tmp, cache, *TINY, f"hydra.run.dir={tmp}/run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", cache


def test_kill9_during_task2_then_resume_is_bit_identical(reference, tmp_path):
    ref_dir, cache = reference
    run_dir = tmp_path / "run"
    proc = clbench(tmp_path, cache, *TINY, f"hydra.run.dir={run_dir}", wait=False)
    mid = run_dir / "checkpoints" / "brain_age" / "mid_task.ckpt"
    deadline = time.time() + 300
    while not mid.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before task 2's first mid-task checkpoint:\n" + (
        proc.stdout.read()[-3000:])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    rows = (run_dir / "matrix.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["row", "init", "after_tumour_seg"]  # killed in task 2

    resumed = clbench(tmp_path, cache, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing task brain_age" in resumed.stdout + resumed.stderr
    assert (run_dir / "matrix.csv").read_bytes() == (ref_dir / "matrix.csv").read_bytes()
    ours, theirs = model_state(run_dir), model_state(ref_dir)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # every weight, bit for bit
    assert not (run_dir / "checkpoints" / "brain_age").exists()  # mid-task state cleaned up
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count("strategy=lora") == 1


def test_resume_of_a_finished_run_trains_nothing(reference, tmp_path):
    ref_dir, cache = reference
    before = {p.name: p.read_bytes() for p in (ref_dir / "checkpoints").glob("*")}
    matrix = (ref_dir / "matrix.csv").read_bytes()
    proc = clbench(tmp_path, cache, f"resume={ref_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "all 2 tasks already done" in out
    assert "task 1/2" not in out and "task 2/2" not in out
    assert (ref_dir / "matrix.csv").read_bytes() == matrix
    assert {p.name: p.read_bytes() for p in (ref_dir / "checkpoints").glob("*")} == before


def test_resume_with_another_config_is_refused_and_changes_nothing(reference, tmp_path):
    ref_dir, cache = reference
    files = {p: p.read_bytes() for p in ref_dir.rglob("*") if p.is_file() and
             ".hydra/resumed" not in str(p) and p.suffix != ".log"}
    proc = clbench(tmp_path, cache, *TINY, "strategy=seq_ft", f"resume={ref_dir}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "another config" in proc.stderr and "strategy.name" in proc.stderr, proc.stderr
    assert all(p.read_bytes() == b for p, b in files.items())


def test_resume_of_a_directory_without_a_run_is_one_clear_error(tmp_path):
    proc = clbench(tmp_path, tmp_path / "cache", f"resume={tmp_path}/nothing")
    assert proc.returncode != 0
    assert "not a cl_bench run directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "nothing").exists()


def test_a_second_writer_is_refused_and_a_killed_holders_lock_is_taken_over(reference, tmp_path):
    """Two real processes on one run directory: the second one stops with one line naming the
    first's host and PID; once the first is killed (-9), the next run takes the lock over."""
    ref_dir, cache = reference
    run_dir = tmp_path / "run"
    first = clbench(tmp_path, cache, *TINY, f"hydra.run.dir={run_dir}", wait=False)
    owner, matrix = run_dir / ".clbench.lock.json", run_dir / "matrix.csv"
    deadline = time.time() + 300
    while not (owner.exists() and matrix.exists()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended too soon:\n" + first.stdout.read()[-3000:]
    before = sorted(p.name for p in run_dir.rglob("*"))
    second = clbench(tmp_path, cache, f"resume={run_dir}")
    assert second.returncode == 2
    errors = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"{run_dir} is in use by another clbench (host {socket.gethostname()}, PID {first.pid}" \
        in errors[0]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    first.stdout.close()
    assert set(before) <= {p.name for p in run_dir.rglob("*")}  # the refusal removed nothing
    third = clbench(tmp_path, cache, f"resume={run_dir}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert matrix.read_text() == (ref_dir / "matrix.csv").read_text()
    assert not owner.exists()  # released at the end
