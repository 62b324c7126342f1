"""The Optuna search (cl_bench.search, issue 27): its objective, its search-space errors, that a
trial never reads the test split, and a search killed with SIGKILL that continues without
repeating a finished trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cl_bench.errors import ClBenchError, ConfigError
from cl_bench.search.objective import parse_objective
from cl_bench.search.space import search_space
from cl_bench.search.sweeper import JOURNAL, open_storage
from conftest import THREADS

ROOT = Path(__file__).resolve().parents[1]
#: a seconds-long search trial: 3 digits tasks, 40 validation images each, 10 steps per task
DIGITS = ["tasks=digits", "tasks.n_val=40", "train.max_steps=10", "train.batch_size=16",
          "train.progress_bar=false", "logger=none", f"hardware.num_threads={THREADS}"]
LR = "strategy.lr=tag(log,interval(1e-4,1e-2))"


def _study(sweep: Path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(open_storage(None, sweep))
    return optuna.load_study(study_name=summary.study_name, storage=open_storage(None, sweep))


# ------------------------------------------------------------------ the objective


def test_objective_names_and_directions():
    assert parse_objective("val.maa").direction(["accuracy"] * 3) == "maximize"
    assert parse_objective("val.maa").direction(["mae"]) == "minimize"
    assert parse_objective("val.mae.final_mean").direction() == "minimize"  # alias, metric named
    assert parse_objective("val.dice.mft").direction() == "maximize"
    assert parse_objective("val.bwt").stat == "bwt_gem"
    assert parse_objective("val.forgetting").direction() == "minimize"  # a loss, whatever metric
    assert parse_objective("val.fwt").direction() == "maximize"         # sign-adjusted
    with pytest.raises(ConfigError, match=r"search.objective=val.maa: the stream mixes metrics "
                                          r"\(dice, mae\); name one: val.dice.maa, val.mae.maa"):
        parse_objective("val.maa").direction(["dice", "mae"])
    for bad, why in [("test.maa", "validation data only"), ("val.accuracy", "unknown statistic"),
                     ("val.top5.maa", "unknown metric 'top5'"), ("maa", "expected val.")]:
        with pytest.raises(ConfigError, match=why):
            parse_objective(bad)


def test_objective_value_is_read_from_the_validation_metrics():
    group = {"maa": 0.8, "final_average": 0.7, "bwt_gem": -0.1}
    trial = {"eval_split": "val", "complete": True, "stream": group,
             "groups": {"accuracy": group}}
    assert parse_objective("val.maa").value(trial) == 0.8
    assert parse_objective("val.accuracy.final_mean").value(trial) == 0.7
    plain = {"eval_split": "test", "complete": True, "stream": {"maa": 0.1},
             "val": {"complete": True, "stream": group, "groups": {"accuracy": group}}}
    assert parse_objective("val.maa").value(plain) == 0.8  # never the test block's 0.1
    with pytest.raises(ClBenchError, match="no validation R"):
        parse_objective("val.maa").value({"complete": True, "stream": group})
    with pytest.raises(ClBenchError, match="incomplete"):
        parse_objective("val.maa").value({**trial, "complete": False, "tasks_completed": 1})


def test_search_space_from_hydra_sweeps():
    dists, fixed = search_space([LR, "strategy.ewc_lambda=tag(log,interval(1,1e6))",
                                 "strategy=ewc,lwf", "train.max_steps=range(10,40,10)",
                                 "seed=0"])
    assert dists["strategy.lr"].log and dists["strategy.lr"].low == 1e-4
    assert dists["strategy"].choices == ("ewc", "lwf")
    r = dists["train.max_steps"]
    assert (r.low, r.high, r.step) == (10, 30, 10)  # Hydra's range: 10, 20, 30
    assert fixed == {"seed": "0"}
    for bad, why in [("strategy.lr=interval(5,1)", "low 5.0 > high 1.0"),
                     ("strategy.lr=tag(log,interval(0,1))", "needs low > 0"),
                     ("train.max_steps=range(5,1)", "range is empty")]:
        with pytest.raises(ConfigError, match=why) as e:
            search_space([bad])
        assert str(e.value).startswith(bad.split("=")[0])


# ------------------------------------------------------------------ bad searches: one line


@pytest.mark.parametrize("args, culprit", [
    (["strategy.lr=interval(5,1)"], "strategy.lr=interval(5,1): bad search space: low 5.0 > high 1.0"),
    (["strategy.lrr=interval(1e-4,1e-2)"], "strategy.lrr"),
    ([LR, "search.objective=test.maa"], "search.objective=test.maa"),
    ([LR, "tasks.n_val=0"], "tasks.n_val: a search evaluates its trials on validation"),
    ([LR, "search.objective=val.dice.maa"], None),  # a stream without Dice: fails every trial
    (["strategy.lr=0.001"], "no search space"),
])
def test_a_bad_search_ends_with_one_line_before_any_trial(cli, tmp_path, args, culprit):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/sweeper=optuna", *DIGITS, "strategy=seq_ft", *args,
               f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2",
               f"results_dir={tmp_path}/r")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("clbench: error: ")
    if culprit is None:  # runs, then stops: every trial failed (objective not in the stream)
        assert "search stopped" in lines[-1] and "no dice tasks" in lines[-1], lines[-1]
        return
    assert culprit in lines[-1], lines[-1]
    assert len([ln for ln in lines if ln.startswith("clbench: error")]) == 1
    assert not sweep.exists()  # refused before the sweep directory was made


# ------------------------------------------------------------------ the test split is never read


class _Sealed:
    """A test split that fails loudly when anything reads it."""

    def __init__(self, task):
        self.task = task

    def __len__(self):
        raise RuntimeError(f"test split of {self.task} read")

    def __getitem__(self, i):
        raise RuntimeError(f"test split of {self.task} read")


def trapped_digits(**kwargs):
    """``tasks._target_``: the digits stream with every test split replaced by a trap."""
    from cl_bench.data.digits import make_digits

    stream = make_digits(**kwargs)
    for task in stream:
        task.test = _Sealed(task.name)
    return stream


def test_a_trial_never_reads_the_test_split_and_reports_validation_numbers(cli, tmp_path):
    trap = "tasks._target_=test_search.trapped_digits"
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/sweeper=optuna", *DIGITS, "strategy=er", trap, LR,
               f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2",
               f"results_dir={tmp_path}/r")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = _study(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    # the same config as trial 0 in a normal run (test split readable): its validation R is
    # the trial's R, number for number; its test R is another matrix, in no trial file
    trial = study.trials[0]
    normal = tmp_path / "normal"
    proc = cli(*DIGITS, "strategy=er", f"strategy.lr={trial.params['strategy.lr']!r}",
               f"hydra.run.dir={normal}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sweep.glob("0_*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_split"] == "val" and "val" not in metrics
    assert not (run / "matrix_val.csv").exists()
    got = pd.read_csv(run / "matrix.csv", index_col=0)
    pd.testing.assert_frame_equal(got, pd.read_csv(normal / "matrix_val.csv", index_col=0))
    test_r = pd.read_csv(normal / "matrix.csv", index_col=0)
    assert not got.equals(test_r)
    assert trial.value == pytest.approx(
        json.loads((normal / "metrics.json").read_text())["val"]["stream"]["maa"])

    # the trap is real: a normal run on the trapped stream dies at its first evaluation
    with pytest.raises(RuntimeError, match="test split of digits_0_1 read"):
        cli(*DIGITS, "strategy=er", trap, f"hydra.run.dir={tmp_path / 'trapped'}")


# ------------------------------------------------------------------ killed and continued


@pytest.mark.slow
def test_a_search_killed_during_trial_2_continues_without_repeating_trials(tmp_path):
    """Acceptance of issue 27: 3 trials on digits, SIGKILL while trial 2 (the third) runs,
    the same command again: trials 0-1 are not run again, trial 2 is run, the study holds 3."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "cl_bench.cli", "-m", "hydra/sweeper=optuna", *DIGITS,
           "strategy=seq_ft", LR, "hydra.sweeper.n_trials=3",
           f"hydra.sweep.dir={sweep}", f"results_dir={tmp_path}/r"]
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"))
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not list(sweep.glob("2_*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the moment trial 2's run directory appears
    proc.wait()
    log.close()
    first = _study(sweep)
    states = [t.state.name for t in first.trials]
    assert states == ["COMPLETE", "COMPLETE", "RUNNING"], (
        states, (tmp_path / "first.log").read_text()[-3000:])
    done = {n: (sweep.glob(f"{n}_*").__next__() / "metrics.json").stat().st_mtime_ns
            for n in (0, 1)}
    running_params = first.trials[2].params

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2/3 trials done, 1 interrupted (continued)" in again.stdout + again.stderr
    study = _study(sweep)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[2].params == running_params  # the interrupted trial, not a new one
    for n, mtime in done.items():  # finished trials were not run again
        assert (next(sweep.glob(f"{n}_*")) / "metrics.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()) == [
        "0_seq_ft_seed0", "1_seq_ft_seed0", "2_seq_ft_seed0"]
    for run in sweep.glob("[0-9]_*"):  # every trial measured validation only
        assert json.loads((run / "metrics.json").read_text())["eval_split"] == "val"
    assert (sweep / JOURNAL).is_file() and (sweep / "optimization_results.yaml").is_file()


def test_a_search_continued_to_more_trials_draws_new_values(cli, tmp_path):
    """``n_trials`` is the study's total: 2 trials, then the same search with ``n_trials=3``
    runs one more, with values of its own (the sampler's state is not in the study: seeded as
    at the start it would draw trial 0's values again)."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/sweeper=optuna", *DIGITS, "train.max_steps=2", "strategy=seq_ft", LR,
            f"hydra.sweep.dir={sweep}", f"results_dir={tmp_path}/r"]
    assert cli(*args, "hydra.sweeper.n_trials=2").returncode == 0
    proc = cli(*args, "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = _study(sweep).trials
    assert [t.number for t in trials] == [0, 1, 2]
    lrs = [t.params["strategy.lr"] for t in trials]
    assert len(set(lrs)) == 3, lrs


def test_a_run_made_before_the_search_keys_existed_still_resumes(cli, tmp_path):
    """A run directory whose saved config has no ``search`` block (made before issue 27) is the
    same config as today's plain run (``search.trial`` null): ``resume=`` continues it."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    args = [*DIGITS[1:], "tasks=digits", "train.max_steps=2", "strategy=seq_ft"]
    assert cli(*args, f"hydra.run.dir={run}").returncode == 0
    saved = OmegaConf.load(run / "checkpoints" / "config.yaml")  # what resume compares
    assert "search" not in saved and "seed" in saved  # as in a run made before issue 27
    proc = cli(*args, f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all 3 tasks already done" in proc.stdout + proc.stderr


def test_a_trial_whose_run_directory_is_in_use_stays_running_and_the_search_says_wait(
        cli, tmp_path):
    """A continued trial whose old job still runs elsewhere (a SLURM job that outlived its
    search) holds its run directory's lock: the search stops with one line and leaves the trial
    running in the study, instead of failing it."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/sweeper=optuna", *DIGITS, "train.max_steps=2", "strategy=seq_ft", LR,
            f"hydra.sweep.dir={sweep}", f"results_dir={tmp_path}/r", "hydra.sweeper.n_trials=2"]
    run = sweep / "1_seq_ft_seed0"
    run.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cl_bench.lock import RunLock\n"
         f"with RunLock({str(run)!r}):\n    print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli(*args)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("clbench: error: trial 1: ") and "is in use by another clbench" in last
    assert "wait for it to end" in last
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE", "RUNNING"]
    again = cli(*args)  # the holder is gone: the same command finishes trial 1
    assert again.returncode == 0, again.stderr[-2000:]
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE", "COMPLETE"]
