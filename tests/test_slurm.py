"""A real sweep through a real SLURM scheduler (scripts/slurm_local.sh brings one up).

Skipped where ``sinfo`` is absent (a laptop); in CI (``CI=true``) a missing cluster is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

#: several minutes of subprocess runs on 2 cores: `pytest -m "not slow"` leaves them out of a
#: quick loop (make test and CI run everything)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["tasks.size=32", "tasks.n_train=4",
        "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
        "tasks.n_val=1", "tasks.n_test=2",
        "backbone=vit3d_tiny", "backbone.weights=null",
        "backbone.num_layers=4", "train.max_steps=3", "train.progress_bar=false",
        "hardware.slurm.cpus_per_task=1", "hardware.slurm.mem_gb=2", "hardware.slurm.time_min=20"]


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return proc.returncode == 0 and bool(proc.stdout.strip())


if not _slurm_up():
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but no SLURM cluster answers `sinfo`: scripts/slurm_local.sh "
                    "should have started one (see .ci/run)", pytrace=False)
    pytest.skip("no SLURM here (`sinfo` absent or not answering); start one with "
                "`sudo bash scripts/slurm_local.sh`", allow_module_level=True)


def clbench(tmp_path: Path, *args: str, module: str = "cl_bench.cli"):
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


def test_sweep_runs_as_a_slurm_job_array_and_report_aggregates_it(tmp_path):
    start = time.perf_counter()
    proc = clbench(tmp_path, "-m", "hardware=slurm", "strategy=seq_ft,lora", "seed=0,1", *TINY,
                   f"results_dir={tmp_path}/results")
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (sweep,) = (tmp_path / "results" / "multirun").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0_seq_ft_seed0", "1_seq_ft_seed1", "2_lora_seed0",
                                      "3_lora_seed1"]
    # four elements of one job array went through slurmctld: <jobid>_<index> folders
    elements = sorted(p.name for p in (sweep / ".submitit").iterdir()
                      if p.is_dir() and "_" in p.name)
    assert len(elements) == 4 and len({e.split("_")[0] for e in elements}) == 1, elements
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["complete"] and metrics["tasks_completed"] == 2
        matrix = pd.read_csv(run / "matrix.csv", index_col=0)
        assert list(matrix.index) == ["init", "after_tumour_seg", "after_brain_age"]
        assert (run / ".hydra" / "config.yaml").is_file()
    seeds = {json.loads((r / "metrics.json").read_text())["seed"] for r in runs}
    assert seeds == {0, 1}
    print(f"\nslurm sweep of 4 elements: {took:.1f} s")

    report = clbench(tmp_path, str(sweep), "--format", "csv", module="cl_bench.report.cli")
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(sweep / "report" / "report.csv")
    assert sorted(table["strategy"]) == ["lora", "seq_ft"]
    assert set(table["n"]) == {2}


def test_bad_partition_is_one_clear_message_and_submits_nothing(tmp_path):
    proc = clbench(tmp_path, "-m", "hardware=slurm", "hardware.slurm.partition=nope", *TINY,
                   f"results_dir={tmp_path}/results")
    assert proc.returncode == 2
    assert "hardware.slurm.partition='nope'" in proc.stderr and "debug" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_requeued_job_resumes_by_itself_and_matches_an_uninterrupted_run(tmp_path):
    """``scontrol requeue`` mid-task (what preemption does): the job starts again, finds its
    checkpoints, continues, and ends with the uninterrupted run's matrix and weights."""
    import torch

    stream = ["tasks.size=32", "tasks.n_train=4",
              "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
              "tasks.n_val=1", "tasks.n_test=2",
              "backbone=vit3d_tiny", "backbone.weights=null",
              "backbone.num_layers=4", "train.progress_bar=false", "train.max_steps=150",
              "train.checkpoint_every_n_epochs=1", "train.checkpoint_min_interval_s=0", "strategy=lora"]
    ref = clbench(tmp_path, *stream, "hardware.num_threads=1", f"hydra.run.dir={tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    sweep = tmp_path / "sweep"
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "cl_bench.cli", "-m", "hardware=slurm",
                             "hardware.slurm.cpus_per_task=1", "hardware.slurm.mem_gb=2",
                             *stream, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mid = sweep / "0_lora_seed0" / "checkpoints" / "brain_age" / "mid_task.ckpt"
    deadline = time.time() + 600
    while not mid.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    (job,) = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()]  # "<id>"
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    for _ in range(150):  # SLURM holds a requeued job ~2 min (BeginTime): make it eligible now
        time.sleep(0.2)
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True,
                               text=True).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            break
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]

    run = sweep / "0_lora_seed0"
    log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert log.count("Starting with JobEnvironment") == 2, log[-3000:]  # it ran twice
    assert "continuing task brain_age" in log  # and the second start resumed mid-task
    assert (run / "matrix.csv").read_bytes() == (tmp_path / "ref" / "matrix.csv").read_bytes()
    ours = torch.load(run / "checkpoints" / "state.pt", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "ref" / "checkpoints" / "state.pt", weights_only=True)["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_an_optuna_search_runs_its_trials_as_a_slurm_job_array(tmp_path):
    """Issue 27: ``hydra/sweeper=optuna`` with ``hardware=slurm``: 2 trials launched at once
    (``n_jobs=2``) are the 2 elements of one job array; each returns its validation objective
    from the SLURM job to the study in the sweep directory."""
    import optuna

    from cl_bench.search.sweeper import open_storage

    sweep = tmp_path / "search"
    proc = clbench(tmp_path, "-m", "hardware=slurm", "hydra/sweeper=optuna", "tasks=digits",
                   "tasks.n_val=40", "train.max_steps=10", "train.batch_size=16",
                   "train.progress_bar=false", "logger=none", "strategy=seq_ft",
                   "strategy.lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.n_jobs=2", "hardware.slurm.cpus_per_task=1",
                   "hardware.slurm.mem_gb=2", "hardware.slurm.time_min=20",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    elements = sorted(p.name for p in (sweep / ".submitit").iterdir()
                      if p.is_dir() and "_" in p.name)
    assert len(elements) == 2 and len({e.split("_")[0] for e in elements}) == 1, elements
    storage = open_storage(None, sweep)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        metrics = json.loads((sweep / f"{trial.number}_seq_ft_seed0" / "metrics.json").read_text())
        assert metrics["eval_split"] == "val"
        assert trial.value == pytest.approx(metrics["stream"]["maa"])
