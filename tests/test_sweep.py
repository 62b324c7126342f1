"""Local multirun: every sweep point has its own directory; a failing point spares the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

TINY = ["tasks.size=32", "tasks.n_train=4", "tasks.n_val=1", "tasks.n_test=2",
        "backbone=vit3d_tiny", "backbone.weights=null",
        "backbone.num_layers=4", "train.max_steps=3", "train.progress_bar=false"]


def test_a_crashing_sweep_point_leaves_the_others_intact(tmp_path):
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "cl_bench.cli", "-m", "strategy=seq_ft", "strategy.lr=1e30,1e-3",
         *TINY, f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # the sweep reports the failure ...
    assert "clbench: error: task 'tumour_seg' (#1): loss became nan" in proc.stderr
    crashed, fine = tmp_path / "sweep" / "0_seq_ft_seed0", tmp_path / "sweep" / "1_seq_ft_seed0"
    # ... the crashed point kept its init row, the next point ran to the end in its own directory
    assert list(pd.read_csv(crashed / "matrix.csv", index_col=0).index) == ["init"]
    assert json.loads((fine / "metrics.json").read_text())["complete"] is True
    assert json.loads((crashed / "metrics.json").read_text())["complete"] is False
