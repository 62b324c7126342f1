"""clbench-report on a search's sweep directory (cl_bench.search.study): a real 3-trial study,
a killed one (a RUNNING trial, no optimization_results.yaml) and the studies it cannot tell."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution, distribution_to_json

from cl_bench.errors import ClBenchError
from cl_bench.search.study import is_study_dir, load_study, write_study_report
from cl_bench.search.sweeper import JOURNAL, RESULTS, open_storage
from conftest import THREADS
from test_report import fake_run

#: a seconds-long trial: 3 digits tasks, 40 validation images each, 10 steps per task
DIGITS = ["tasks=digits", "tasks.n_val=40", "train.max_steps=10", "train.batch_size=16",
          "train.progress_bar=false", "logger=none", f"hardware.num_threads={THREADS}"]
SPACE = ["strategy.lr=tag(log,interval(1e-4,1e-2))",
         "strategy.head_lr=tag(log,interval(1e-4,1e-1))"]
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_report_of_a_real_search(cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "hydra/sweeper=optuna", *DIGITS, "strategy=seq_ft", *SPACE,
               f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=3", f"results_dir={tmp_path}/r")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert is_study_dir(sweep) and not is_study_dir(sweep / "0_seq_ft_seed0")
    (name,) = optuna.get_all_study_names(open_storage(None, sweep))
    study = optuna.load_study(study_name=name, storage=open_storage(None, sweep))
    best = study.best_trial

    proc = cli(str(sweep), module="cl_bench.report.cli")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = sweep / "study"

    # trials.csv: one row per trial, Optuna's numbers, values and params exactly
    trials = pd.read_csv(out / "trials.csv", float_precision="round_trip")
    assert list(trials.columns) == ["number", "state", "value", "strategy.lr", "strategy.head_lr",
                                    "datetime_start", "duration_s", "run_dir"]
    assert trials["number"].tolist() == [0, 1, 2]
    assert trials["state"].tolist() == ["COMPLETE"] * 3
    for t, row in zip(study.trials, trials.to_dict("records")):
        assert row["value"] == t.value
        assert row["strategy.lr"] == t.params["strategy.lr"]
        assert row["strategy.head_lr"] == t.params["strategy.head_lr"]
        assert row["run_dir"] == f"{t.number}_seq_ft_seed0" and (sweep / row["run_dir"]).is_dir()
        assert row["duration_s"] > 0
    assert trials["value"].max() == best.value  # val.maa is maximised

    # best_config.yaml: the best trial's config (its values), under a header that names it
    text = (out / "best_config.yaml").read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert f"trial {best.number} of 3 (3 complete), val.maa = {best.value!r} (maximize)." in header[1]
    cfg = OmegaConf.load(out / "best_config.yaml")
    assert cfg.strategy.lr == best.params["strategy.lr"]
    assert cfg.strategy.head_lr == best.params["strategy.head_lr"]
    assert cfg.strategy.name == "seq_ft" and cfg.search.trial == best.number
    overrides = (out / "best_overrides.txt").read_text().splitlines()
    assert overrides == list(OmegaConf.load(sweep / RESULTS).best_overrides)
    assert not any(o.startswith("search.trial=") for o in overrides)
    assert all(f"#   {o}" in header for o in overrides)

    # the plots, and stdout naming every file and the best trial
    for name in ("history", "importance"):
        assert _is_png(out / f"{name}.png"), name
    for f in ("trials.csv", "best_config.yaml", "best_overrides.txt", "history.png",
              "importance.png"):
        assert f"clbench-report: wrote {out / f}\n" in proc.stdout, f
    assert f"best: trial {best.number}, val.maa = {best.value:.6g}: strategy.lr=" in proc.stdout

    # the trials' own report: one group per trial (their searched keys differ), all complete
    runs = pd.read_csv(sweep / "report" / "report.csv")
    # the trials' R is on the validation split: the table says so
    assert len(runs) == 3 and set(runs["status"]) == {"complete (validation R)"}
    assert sorted(runs["search.trial"]) == [0, 1, 2]


def _killed_study(sweep: Path) -> optuna.Study:
    """A search killed during trial 1, made with Optuna directly as the sweeper makes it: trial 0
    complete (lr 0.001, the value of fake_run's config), trial 1 RUNNING, no results file."""
    study = optuna.create_study(storage=open_storage(None, sweep), study_name="toy-ewc",
                                direction="maximize")
    space = {"strategy.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for key, value in {"objective": "val.maa", "direction": "maximize", "fixed": {"tasks": "toy"},
                       "search_space": {k: distribution_to_json(d) for k, d in space.items()},
                       "sweep_dir": str(sweep.resolve())}.items():
        study.set_user_attr(key, value)
    for number, lr in enumerate([0.001, 0.005]):
        study.enqueue_trial({"strategy.lr": lr})
        trial = study.ask(space)
        trial.set_user_attr("overrides", ["tasks=toy", f"strategy.lr={lr}",
                                          f"search.trial={number}"])
    study.tell(0, 0.5)
    fake_run(sweep, "0_ewc_seed0", "ewc", 0, [[0.0, 20.0], [0.5, 20.0], [0.4, 12.0]])
    (sweep / "1_ewc_seed0" / "checkpoints").mkdir(parents=True)  # started, nothing written yet
    return study


def test_report_of_a_killed_search(cli, tmp_path):
    sweep = tmp_path / "sweep"
    _killed_study(sweep)
    assert not (sweep / RESULTS).exists() and is_study_dir(sweep)

    proc = cli(str(sweep), module="cl_bench.report.cli")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = sweep / "study"
    trials = pd.read_csv(out / "trials.csv", float_precision="round_trip")
    assert trials["state"].tolist() == ["COMPLETE", "RUNNING"]
    assert trials["value"].iloc[0] == 0.5 and trials["value"].isna().iloc[1]
    assert trials["duration_s"].isna().iloc[1]  # still running
    assert trials["run_dir"].tolist() == ["0_ewc_seed0", "1_ewc_seed0"]
    assert trials["strategy.lr"].tolist() == [0.001, 0.005]
    assert OmegaConf.load(out / "best_config.yaml").strategy.lr == 0.001
    assert (out / "best_overrides.txt").read_text() == "tasks=toy\nstrategy.lr=0.001\n"
    assert _is_png(out / "history.png")
    # one complete trial: no importances, a note says why, and stdout says so
    assert not (out / "importance.png").exists()
    note = (out / "importance.txt").read_text()
    assert "1 complete trial: importances need at least 2" in note
    assert f"wrote {out / 'importance.txt'} (1 complete trial: importances need at least 2)" \
        in proc.stdout
    assert "best: trial 0, val.maa = 0.5: strategy.lr=" in proc.stdout
    assert (sweep / "report" / "report.md").is_file()  # the runs' table too


def test_a_search_killed_before_any_trial_finished(tmp_path):
    sweep = tmp_path / "sweep"
    study = optuna.create_study(storage=open_storage(None, sweep), study_name="s")
    study.ask({"x": FloatDistribution(0, 1)})  # RUNNING, no run directory yet
    written = write_study_report(sweep)
    assert set(written) == {"trials", "best_config_note", "history_note", "importance_note"}
    assert "no complete trial yet" in written["best_config_note"].read_text()
    trials = pd.read_csv(written["trials"])
    assert trials[["number", "state", "run_dir"]].fillna("").values.tolist() == [[0, "RUNNING", ""]]
    # the study grows: the notes give way to the files (and are removed)
    study.tell(0, 1.0)
    study.tell(study.ask({"x": FloatDistribution(0, 1)}), 2.0)
    written = write_study_report(sweep)
    assert {"history", "importance", "best_overrides"} <= set(written)
    assert "best_config_note" in written  # no run directory for the best trial
    assert not (sweep / "study" / "importance.txt").exists()
    # no overrides recorded: rebuilt from the best trial's params (minimised: trial 0)
    assert (sweep / "study" / "best_overrides.txt").read_text() == f"x={study.trials[0].params['x']}\n"


def test_which_study(tmp_path):
    plain = tmp_path / "plain"
    fake_run(plain, "0_seq_ft_seed0", "seq_ft", 0, [[0.0, 20.0], [0.5, 20.0], [0.4, 12.0]])
    assert not is_study_dir(plain) and not is_study_dir(tmp_path / "nowhere")
    with pytest.raises(ClBenchError, match="no Optuna study for .*plain: its journal .* does not"):
        load_study(plain)
    assert not (plain / JOURNAL).exists()  # looking did not make one

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / JOURNAL).touch()
    with pytest.raises(ClBenchError, match=f"no Optuna study in {empty}"):
        load_study(empty)

    two = tmp_path / "two"
    for name in ("a", "b"):
        optuna.create_study(storage=open_storage(None, two), study_name=name)
    with pytest.raises(ClBenchError, match=r"holds 2 studies \(a, b\)"):
        load_study(two)
    # one of them made by a search in this directory: that one
    optuna.load_study(study_name="b", storage=open_storage(None, two)).set_user_attr(
        "sweep_dir", str(two.resolve()))
    assert load_study(two).study_name == "b"

    # a finished search names its study; a moved sweep directory still finds its journal
    (two / RESULTS).write_text(json.dumps({"study_name": "a", "storage": "/gone/" + JOURNAL}))
    assert load_study(two).study_name == "a"
