"""Validation checks during a task and early stopping on the validation metric
(cl_bench.training.ValidationChecks; train.val_every_n_steps, train.early_stopping_*)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cl_bench.errors import ConfigError
from cl_bench.runner import run

SEQ_FT = ("strategy=seq_ft", "hardware.num_threads=1")


def _steps(run_dir) -> list[int]:
    timing = json.loads((run_dir / "timing.json").read_text())
    return [t["steps"] for t in timing["tasks"].values()]


def test_checks_without_stopping_train_exactly_as_no_checks(compose_cfg, tmp_path):
    """A check reads the validation set in inference mode and draws no random number: the run
    ends with the same R (test and validation) to the bit, and its last check of a task is that
    task's validation score in the row after it."""
    over = ("strategy=lora", "train.max_steps=4", "hardware.num_threads=1",
            "train.early_stopping_patience=0", "train.early_stopping_restore_best=false")
    plain = run(compose_cfg(*over), tmp_path / "plain").run_dir
    checked = run(compose_cfg(*over, "train.val_every_n_steps=2"), tmp_path / "checked").run_dir
    for name in ("matrix.csv", "matrix_val.csv"):
        assert (plain / name).read_text() == (checked / name).read_text(), name
    assert not (plain / "val_checks.csv").exists()
    checks = pd.read_csv(checked / "val_checks.csv")
    val = pd.read_csv(checked / "matrix_val.csv", index_col=0)
    assert list(checks["step"]) == [2, 4, 2, 4]
    for task, rows in checks.groupby("task", sort=False):
        last = val.loc[f"after_{task}", task]  # matrix_val.csv: 6 significant digits
        assert rows["value"].iloc[-1] == pytest.approx(last, rel=1e-5)
        assert (rows["seconds"] > 0).all()
    assert _steps(checked) == [4, 4]


def test_early_stopping_stops_a_task_whose_validation_metric_stalls(compose_cfg, tmp_path):
    # a learning rate far below float resolution: the weights, hence the validation metric,
    # never change, so the task stops after 1 + patience checks (every 2 steps)
    cfg = compose_cfg(*SEQ_FT, "strategy.lr=1e-30", "strategy.head_lr=1e-30",
                      "train.max_steps=40", "train.early_stopping_patience=2",
                      "train.val_every_n_steps=2")
    run(cfg, tmp_path)
    assert _steps(tmp_path) == [6, 6]
    checks = pd.read_csv(tmp_path / "val_checks.csv")
    assert (checks["best_step"] == 2).all() and len(checks) == 6


def test_restore_best_ends_a_task_on_its_best_check(compose_cfg, tmp_path):
    """With restore_best, each task's validation score right after it is its best check's,
    whichever step that was (here a learning rate high enough for the checks to differ)."""
    cfg = compose_cfg(*SEQ_FT, "strategy.lr=3e-2", "train.max_steps=8",
                      "train.val_every_n_steps=2", "train.early_stopping_patience=0",
                      "train.early_stopping_restore_best=true")
    run(cfg, tmp_path)
    checks = pd.read_csv(tmp_path / "val_checks.csv")
    val = pd.read_csv(tmp_path / "matrix_val.csv", index_col=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for task, rows in checks.groupby("task", sort=False):
        higher = metrics["units"][task]["higher_is_better"]
        best = rows["value"].max() if higher else rows["value"].min()
        assert val.loc[f"after_{task}", task] == pytest.approx(best, rel=1e-5), task
        assert rows["best_step"].iloc[-1] == rows.loc[rows["value"] == best, "step"].iloc[0]
    assert _steps(tmp_path) == [8, 8]
    # the restore did something: brain_age's best check is not its last (0.91 y at step 2)
    age = checks[checks["task"] == "brain_age"]
    assert age["best_step"].iloc[-1] < age["step"].iloc[-1]


def test_patience_without_checks_is_refused(compose_cfg, tmp_path):
    cfg = compose_cfg("train.early_stopping_patience=2", "train.val_every_n_steps=0")
    with pytest.raises(ConfigError, match=r"train.val_every_n_steps > 0"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
