"""hardware=ddp on two CPU processes (gloo): the stream trains in lockstep, rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

#: several minutes of subprocess runs on 2 cores: `pytest -m "not slow"` leaves them out of a
#: quick loop (make test and CI run everything)
pytestmark = pytest.mark.slow


def test_two_process_ddp_run_on_cpu(tmp_path):
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path))
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cl_bench.cli", "hardware=ddp", "hardware.accelerator=cpu",
         "hardware.devices=2", "hardware.precision=32-true", "hardware.num_threads=1",
         "strategy=lora", "tasks.size=32", "tasks.n_train=4",
                          "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
                          "tasks.n_val=1", "tasks.n_test=2",
         "backbone=vit3d_tiny", "backbone.weights=null", "backbone.num_layers=4", "train.max_steps=4",
         "train.progress_bar=false", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr  # a real second process
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    assert list(R.index) == ["init", "after_tumour_seg", "after_brain_age"]
    assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
    assert R.loc["after_tumour_seg", "tumour_seg"] != R.loc["init", "tumour_seg"]  # it trained
    assert sorted(p.name for p in (run_dir / "adapters").iterdir() if p.is_dir()) == [
        "brain_age", "tumour_seg"]
