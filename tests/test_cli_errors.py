"""User mistakes end with one clear message and a non-zero exit code, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_bench.errors import TrainingError
from cl_bench.runner import run

ROOT = Path(__file__).resolve().parents[1]


def clbench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cl_bench.cli", f"results_dir={tmp_path}/results", *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLBENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def assert_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err, err
    lines = [ln for ln in err.split("\n") if ln.strip()]
    # one message: its line, then at most an indented layout hint (the expected file tree) and
    # where the rows finished before the error are
    assert lines[0].startswith("clbench: error: ") and all(
        ln.startswith(" ") or ln.startswith("clbench: completed rows are kept in ")
        for ln in lines[1:]), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"


@pytest.mark.parametrize("args, needles", [
    (["strategy=nope"], ["strategy=nope", "lora"]),              # unknown strategy lists options
    (["strategy.rnak=4"], ["strategy.rnak"]),                      # misspelled key
    (["strategy.rank=abc"], ["strategy.rank", "int", "abc"]),      # wrong type in a group
    (["seed=abc"], ["seed", "abc"]),                               # wrong type at top level
    (["strategy.rank=-4"], ["strategy.rank", "-4"]),               # out of range
    (["tasks=brats_ixi", "tasks.brats_root=/no/such/dir"], ["tasks.brats_root", "/no/such/dir"]),
    (["backbone.weights=/no/such.safetensors"], ["backbone.weights", "/no/such.safetensors"]),
    (["hardware=gpu", "backbone.weights=null"], ["hardware", "gpu"]),              # no GPU here
])
def test_bad_input_gives_one_clear_message(cli, tmp_path, args, needles):
    assert_clear_error(cli(f"results_dir={tmp_path}/results", *args), *needles)


def test_nan_loss_stops_with_message_and_keeps_rows(compose_cfg, tmp_path, monkeypatch):
    """A task whose data makes the loss NaN: clear TrainingError; earlier rows stay on disk."""
    import cl_bench.data.brain_synth as synth

    make = synth.make_brain_seg_age

    def poisoned(*a, **k):
        stream = make(*a, **k)
        stream[1].train.images[:] = float("nan")  # task 2's training images are corrupt
        return stream

    monkeypatch.setattr(synth, "make_brain_seg_age", poisoned)
    cfg = compose_cfg("strategy=seq_lp")
    with pytest.raises(TrainingError, match="brain_age.*nan"):
        run(cfg, tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert list(R.index) == ["init", "after_tumour_seg"]
    assert np.isfinite(R.to_numpy()).all()


def test_diverging_run_from_the_command_line(tmp_path):
    """An absurd learning rate: exit code 2, one message naming the task, the init row kept.
    (One of the two command-line smoke tests that start a real ``python -m cl_bench.cli``.)"""
    proc = clbench(tmp_path, "tasks.size=32", "tasks.n_train=2",
                             "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
                             "tasks.n_val=1", "tasks.n_test=1",
                   "backbone=vit3d_tiny", "backbone.weights=null", "backbone.num_layers=2",
                   "train.max_steps=4",
                   "strategy=seq_ft", "strategy.lr=1e30", "train.progress_bar=false")
    assert proc.returncode == 2
    assert_clear_error(proc, "task 'tumour_seg'", "loss became")
    (matrix,) = (tmp_path / "results").rglob("matrix.csv")
    assert list(pd.read_csv(matrix, index_col=0).index) == ["init"]
    # the summary of what the failed run has: its one row, marked incomplete, and where it is
    assert "INCOMPLETE: 0/2 tasks" in proc.stdout and re.search(r"^init\s+[\d.]+\s+[\d.]+$",
                                                                 proc.stdout, re.M)
    assert f"files: {matrix.parent}/" in proc.stdout


@pytest.mark.parametrize("multirun", [False, True])
def test_a_results_dir_below_a_regular_file_is_one_line_naming_the_key(cli, tmp_path, multirun):
    """Hydra would make the run (or sweep) directory and fail with a NotADirectoryError trace;
    the check before it names ``results_dir`` and creates nothing."""
    (tmp_path / "afile").write_text("not a directory")
    proc = cli(*(["-m"] if multirun else []), f"results_dir={tmp_path}/afile/sub",
               "experiment=split_mnist", "train.max_steps=1", "logger=none")
    assert_clear_error(proc, "results_dir", f"{tmp_path}/afile is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
