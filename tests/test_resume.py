"""Resume: kill -9 during task 2, continue, and get the uninterrupted run's results bit for bit."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

#: several minutes of subprocess runs on 2 cores: `pytest -m "not slow"` leaves them out of a
#: quick loop (make test and CI run everything)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

#: a 2-task stream small enough for CI; task 2 (brain_age) long enough to be killed in.
#: A mid-task checkpoint every 5 epochs (10 steps): one every 2 steps made the run 5x slower
#: (81 s against 16 s), all of it writing checkpoints. One thread (the suite's workers share
#: the cores), given to every command (THREADS): a resume with another count rounds differently
TINY = ["tasks.size=32", "tasks.n_train=4",
        "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
        "tasks.n_val=1", "tasks.n_test=2",
        "backbone=vit3d_tiny", "backbone.weights=null",
        "backbone.num_layers=4", "train.progress_bar=false", "train.checkpoint_every_n_epochs=5",
        "train.checkpoint_min_interval_s=0", "train.max_steps=240", "strategy=lora"]
THREADS = "hardware.num_threads=1"


def _env(tmp_path: Path, cache: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLBENCH_CACHE": str(cache),
            "PYTHONHASHSEED": "0"}


def clbench(tmp_path: Path, cache: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "cl_bench.cli", *args, THREADS]
    if not wait:
        # the run answers Ctrl-C as a terminal's foreground process does, however pytest was
        # started: a shell's background job (`cmd &` without job control) hands its children
        # SIGINT ignored, and Python keeps an ignored SIGINT ignored
        return subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path, cache),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path, cache), capture_output=True,
                          text=True, timeout=600)


def start_until_task2_checkpoint(tmp: Path, cache: Path, run_dir: Path, args=tuple(TINY),
                                 task: str = "brain_age"):
    """Start the run of ``args`` (the TINY run) and wait (<= 300 s) for ``task``'s (task 2's)
    first mid-task checkpoint: ``(the running process, the checkpoint's path)``."""
    proc = clbench(tmp, cache, *args, f"hydra.run.dir={run_dir}", wait=False)
    mid = run_dir / "checkpoints" / task / "mid_task.ckpt"
    deadline = time.time() + 300
    while not mid.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return proc, mid


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
    proc, mid = start_until_task2_checkpoint(tmp_path, cache, run_dir)
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


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C"),
                                             (signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_cleanly_says_how_to_resume_and_resumes_bit_identically(
        reference, tmp_path, sig, code, name):
    ref_dir, cache = reference
    run_dir = tmp_path / "run"
    proc, mid = start_until_task2_checkpoint(tmp_path, cache, run_dir)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.kill(proc.pid, sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out
    stopped = [ln for ln in out.splitlines() if ln.startswith("clbench: stopped: ")]
    assert len(stopped) == 1, out[-3000:]
    assert f"interrupted by {name} after 1/2 tasks" in stopped[0]
    assert "continue at task 2/2 brain_age from its mid-task checkpoint" in stopped[0]
    assert stopped[0].endswith(f"clbench resume={run_dir}")
    assert mid.is_file() and (run_dir / "checkpoints" / "state.pt").is_file()  # kept
    resumed = clbench(tmp_path, cache, f"resume={run_dir}")  # the lock was released
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "matrix.csv").read_bytes() == (ref_dir / "matrix.csv").read_bytes()
    ours, theirs = model_state(run_dir), model_state(ref_dir)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


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


def _settled(run_dir: Path) -> set[str]:
    """The names under ``run_dir`` without the atomic writer's temporary files
    (``.<name>.<random><suffix>``, cl_bench.results): a running writer renames those at any time."""
    names = {p.name for p in run_dir.rglob("*")}
    return {n for n in names if not re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}(\.\w+)?", n)}


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
    before = _settled(run_dir)
    second = clbench(tmp_path, cache, f"resume={run_dir}")
    assert second.returncode == 2
    errors = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"{run_dir} is in use by another clbench (host {socket.gethostname()}, PID {first.pid}" \
        in errors[0]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    first.stdout.close()
    assert before <= _settled(run_dir)  # the refusal removed nothing
    third = clbench(tmp_path, cache, f"resume={run_dir}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert matrix.read_text() == (ref_dir / "matrix.csv").read_text()
    assert not owner.exists()  # released at the end


@pytest.fixture(scope="module")
def stopped(reference, tmp_path_factory) -> Path:
    """A run stopped by SIGTERM in task 2, after its first mid-task checkpoint (tests copy it)."""
    _, cache = reference
    tmp = tmp_path_factory.mktemp("stopped")
    run_dir = tmp / "run"
    proc, mid = start_until_task2_checkpoint(tmp, cache, run_dir)
    os.kill(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and mid.is_file(), out[-3000:]
    return run_dir


def _copy(stopped: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    return run_dir


def _one_error_line(proc) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("clbench: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _digests(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run_dir / "checkpoints").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_mid_task_checkpoint_is_refused_naming_it_and_nothing_is_deleted(
        reference, stopped, tmp_path, damage):
    _, cache = reference
    run_dir = _copy(stopped, tmp_path)
    mid = run_dir / "checkpoints" / "brain_age" / "mid_task.ckpt"
    if damage == "truncated":  # what a full disk under Lightning's in-place write leaves
        mid.write_bytes(mid.read_bytes()[: mid.stat().st_size // 2])
    else:  # some other torch checkpoint put in its place
        torch.save({"state_dict": {}, "epoch": 3}, mid)
    before = _digests(run_dir)
    line = _one_error_line(clbench(tmp_path, cache, f"resume={run_dir}"))
    assert "mid_task.ckpt" in line and "nothing was changed" in line
    assert _digests(run_dir) == before  # nothing deleted or rewritten


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_state_pt_is_refused_naming_it_and_nothing_is_deleted(
        reference, stopped, tmp_path, damage):
    _, cache = reference
    run_dir = _copy(stopped, tmp_path)
    state = run_dir / "checkpoints" / "state.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    else:
        torch.save({"weights": torch.zeros(3)}, state)
    before = _digests(run_dir)
    line = _one_error_line(clbench(tmp_path, cache, f"resume={run_dir}"))
    assert str(state) in line and "nothing was changed" in line
    assert _digests(run_dir) == before


def _file_size_limit(limit: int):
    def set_limit():  # runs in the child: writes past `limit` bytes fail with EFBIG, as a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_write_failing_mid_checkpoint_keeps_the_previous_one_and_names_the_file(
        reference, stopped, tmp_path):
    """A full disk, injected as a real failing write: the resumed run's file-size limit is below
    its checkpoint's size (CPython ignores SIGXFSZ, so the write fails with EFBIG)."""
    ref_dir, cache = reference
    run_dir = _copy(stopped, tmp_path)
    mid = run_dir / "checkpoints" / "brain_age" / "mid_task.ckpt"
    before = _digests(run_dir)
    rows = (run_dir / "matrix.csv").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", f"resume={run_dir}", THREADS],
                          cwd=tmp_path, env=_env(tmp_path, cache), capture_output=True, text=True,
                          timeout=600, preexec_fn=_file_size_limit(mid.stat().st_size // 2))
    line = _one_error_line(proc)
    assert "cannot write" in line and "mid_task.ckpt" in line, line
    assert "previous version is unchanged" in line
    assert _digests(run_dir) == before  # the previous checkpoints, byte for byte
    assert (run_dir / "matrix.csv").read_bytes() == rows
    assert not [p for p in run_dir.rglob(".mid_task.ckpt.*")]  # no partial file left
    again = clbench(tmp_path, cache, f"resume={run_dir}")  # space again: it completes, exactly
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "matrix.csv").read_bytes() == (ref_dir / "matrix.csv").read_bytes()


#: a tiny Swin (TINY_SWIN of tests/models/test_swin.py) under bf16 autocast, with the decoder's
#: defaults: float32 under autocast, channels_last_3d weights and Adam states
SWIN = ["tasks.size=64", "tasks.n_train=2",
        "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
        "tasks.n_val=1", "tasks.n_test=1",
        "backbone=swin_unetr", "backbone.weights=null", "backbone.feature_size=12",
        "backbone.depths=[1,1,1,1]", "backbone.num_heads=[3,3,3,3]",
        "backbone.decoder_feature_size=4", "strategy=lora", "hardware.precision=bf16-mixed",
        "strategy.rank=2",  # <= the tiny shared decoder's width (4)
        "train.max_steps=6", "train.checkpoint_every_n_epochs=2",
        "train.checkpoint_min_interval_s=0", "train.progress_bar=false", "logger=none"]


def test_default_swin_decoder_resumes_bit_identically_after_kill9_in_the_segmentation_task(
        tmp_path):
    cache = tmp_path / "cache"
    ref = clbench(tmp_path, cache, *SWIN, f"hydra.run.dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "run"
    proc, mid = start_until_task2_checkpoint(tmp_path, cache, run_dir, SWIN, "tumour_seg")
    assert proc.poll() is None, "the run ended before tumour_seg's first mid-task checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not (run_dir / "checkpoints" / "state.pt").exists()  # killed in task 1
    resumed = clbench(tmp_path, cache, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "matrix.csv").read_bytes() == (tmp_path / "ref" / "matrix.csv").read_bytes()
    ours, theirs = model_state(run_dir), model_state(tmp_path / "ref")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the shared decoder's weights (the backbone's, LoRA-adapted or not) in channels_last_3d
    decoder = [k for k in ours if ".decoder." in k and k.endswith("weight") and "lora_" not in k
               and ours[k].dim() == 5]
    assert decoder and all(ours[k].dim() != 5 or ours[k].is_contiguous(
        memory_format=torch.channels_last_3d) for k in decoder)


#: a seconds-long run (the digits stream) for the command-line checks of resume's refusals
DIGITS = ["tasks=digits", "train.max_steps=2", "train.batch_size=16", "logger=none",
          "train.progress_bar=false", "eval.probes=false", THREADS]


def test_a_refused_resume_names_only_the_keys_the_command_changed(cli, tmp_path):
    """``resume=<dir> train.max_steps=50`` on a run of 2 steps: the refusal names
    ``train.max_steps: 2 → 50`` alone, not the 52 keys in which the command line's defaults
    (the brain job) differ from the run's config; restating the run's values resumes."""
    run_dir = tmp_path / "run"
    proc = cli(*DIGITS, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()
             and ".hydra" not in p.parts and p.suffix != ".log"}

    proc = cli(f"resume={run_dir}", "train.max_steps=50")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("clbench: error:")]
    assert "another config (train.max_steps: 2 → 50; there → here)" in line, line
    assert all(p.read_bytes() == b for p, b in files.items())

    proc = cli(f"resume={run_dir}", "strategy=seq_ft", "train.max_steps=2")
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("clbench: error:")]
    assert "another config (strategy.name: 'lora' → 'seq_ft'; there → here)" in line, line

    proc = cli(f"resume={run_dir}", "tasks=digits", "train.max_steps=2", "train.batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 3 tasks already done" in proc.stdout + proc.stderr


def test_validation_checks_and_early_stopping_state_survive_kill9(tmp_path):
    """The validation checks' state (best value and step, patience count, best weights, rows)
    is in the mid-task checkpoints: a run killed in task 2 and resumed ends with the
    uninterrupted run's R and val_checks.csv, restoring the same best weights."""
    args = [*TINY, "train.max_steps=60", "train.val_every_n_steps=10",
            "train.early_stopping_patience=50", "train.early_stopping_restore_best=true"]
    cache = tmp_path / "cache"
    ref = clbench(tmp_path, cache, *args, f"hydra.run.dir={tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "run"
    proc, mid = start_until_task2_checkpoint(tmp_path, cache, run_dir, args)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    resumed = clbench(tmp_path, cache, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("matrix.csv", "matrix_val.csv"):
        assert (run_dir / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    ours = pd.read_csv(run_dir / "val_checks.csv").drop(columns="seconds")
    theirs = pd.read_csv(tmp_path / "ref" / "val_checks.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ours, theirs)
    assert list(ours["step"]) == list(range(10, 61, 10)) * 2  # no check lost or repeated
