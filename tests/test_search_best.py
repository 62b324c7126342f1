"""``clbench-best <sweep dir> seed=...`` (cl_bench.search.best): a search's best config rerun on
the test split over seeds, and the mean ± std table of those runs."""

from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from cl_bench.search import best


def _best(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``clbench-best *args`` in this process (its runs in a child process): exit code, stdout,
    stderr."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # cli.main set it for this process
    monkeypatch.setattr(sys, "argv", ["clbench-best", *args])
    capsys.readouterr()
    code = 0
    try:
        best.main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _overrides(run) -> list[str]:
    return [str(o) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml")]


def test_best_config_runs_on_test_over_seeds(cli, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "study"
    r = cli("-m", "hydra/sweeper=optuna", "tasks=digits", "tasks.n_tasks=2", "tasks.n_val=40",
            "strategy=ewc", "train.max_steps=10", "train.batch_size=16",
            "train.progress_bar=false", "logger=none",
            "hardware.num_threads=1",  # one thread: two spin on a busy 2-core machine
            "strategy.lr=tag(log,interval(1e-4,1e-2))", "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}", f"results_dir={tmp_path / 'results'}")
    assert r.returncode == 0, r.stderr
    result = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert result["n_complete"] == 2
    searched = [o for o in result["best_overrides"] if o.startswith("strategy.lr=")]
    assert len(searched) == 1
    assert best.best_overrides(sweep) == result["best_overrides"]  # from the study itself

    # a bad extra override: one line before any run
    code, out, err = _best(monkeypatch, capsys, str(sweep), "sead=0,1")
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("clbench-best: error: sead: unknown key")
    assert not (sweep / "best").exists()

    code, out, err = _best(monkeypatch, capsys, str(sweep), "seed=0,1")
    assert code == 0, err
    runs = sorted(p.parent for p in (sweep / "best").glob("*/metrics.json"))
    assert len(runs) == 2
    seeds = set()
    for run in runs:
        overrides = _overrides(run)
        assert searched[0] in overrides and "tasks.n_val=40" in overrides
        assert not any(o.startswith("search.trial=") for o in overrides)
        seeds |= {int(o.split("=")[1]) for o in overrides if o.startswith("seed=")}
        assert OmegaConf.load(run / ".hydra" / "config.yaml").search.trial is None
        assert json.loads((run / "metrics.json").read_text())["eval_split"] == "test"
    assert seeds == {0, 1}

    # seed 0 is the best trial's run again: the same training (its validation R is the trial's,
    # number for number), measured on the test split this time (another R)
    trial = pd.read_csv(sweep / f"{result['best_trial']}_ewc_seed0" / "matrix.csv", index_col=0)
    seed0 = next(run for run in runs if "seed=0" in _overrides(run))
    pd.testing.assert_frame_equal(pd.read_csv(seed0 / "matrix_val.csv", index_col=0), trial)
    test = pd.read_csv(seed0 / "matrix.csv", index_col=0)
    assert test.shape == trial.shape and not test.equals(trial)

    assert "clbench-best: running: clbench -m " in out and "seed=0,1" in out
    assert f"trial {result['best_trial']}," in out
    assert re.search(r"\| +digits +\| +ewc +\|.*\b2 \| complete", out), out
    assert re.search(r"\d\.\d+ ± \d\.\d+", out), out
    assert "[val]" not in out  # the printed table: test numbers only
    assert (sweep / "best" / "report" / "report.md").is_file()
    assert f"{sweep / 'best' / 'report' / 'report.md'}" in out


def test_not_a_search_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "run").mkdir()
    for where in (tmp_path / "run", tmp_path / "missing"):
        code, out, err = _best(monkeypatch, capsys, str(where), "seed=0,1")
        assert code == 2 and out == "", (out, err)
        assert err.startswith(f"clbench-best: error: {where}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "optuna_journal.log").exists()  # nothing created
    code, out, err = _best(monkeypatch, capsys)
    assert code == 2 and err.startswith("usage: clbench-best")
    code, out, err = _best(monkeypatch, capsys, "--help")
    assert code == 0 and out.startswith("usage: clbench-best") and "seed=0,1,2" in out


def _study(sweep, states, hydra_overrides=()):
    """A journal study in ``sweep`` made by hand, trials in ``states``, as the sweeper records
    them; and the master config with the search's ``hydra`` overrides."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from cl_bench.search.sweeper import open_storage

    study = optuna.create_study(storage=open_storage(None, sweep), study_name="digits-ewc",
                                direction="maximize")
    study.set_user_attr("fixed", {"tasks": "digits", "seed": "3"})
    for number, state in enumerate(states):
        lr = 0.001 * (number + 1)
        study.add_trial(create_trial(
            state=getattr(TrialState, state), value=lr if state == "COMPLETE" else None,
            params={"strategy.lr": lr},
            distributions={"strategy.lr": FloatDistribution(1e-4, 1e-2, log=True)},
            user_attrs={"overrides": ["tasks=digits", "seed=3", f"strategy.lr={lr}",
                                      f"search.trial={number}"]}))
    OmegaConf.save(OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra_plugins.clbench_optuna_sweeper.optuna_sweeper."
                                "ClBenchOptunaSweeper", "storage": None, "study_name": None},
        "overrides": {"hydra": list(hydra_overrides), "task": []}}}), sweep / "multirun.yaml")


def test_no_complete_trial_is_one_line(tmp_path, monkeypatch, capsys):
    _study(tmp_path, ["FAIL", "FAIL"])
    code, out, err = _best(monkeypatch, capsys, str(tmp_path), "seed=0,1")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"clbench-best: error: {tmp_path}: ") and "no complete trial" in err
    assert "2 fail" in err


def test_command_of_a_killed_search(tmp_path):
    """No optimization_results.yaml (the search was killed): the study alone names the best
    trial; the launcher choices of the search command line come along, the sweeper's do not;
    an extra override replaces the best config's value of its key."""
    _study(tmp_path, ["COMPLETE", "COMPLETE", "RUNNING"], hydra_overrides=[
        "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}",
        "hydra.mode=MULTIRUN", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5"])
    assert best.best_overrides(tmp_path) == ["tasks=digits", "seed=3", "strategy.lr=0.002"]
    overrides, out = best.best_command(tmp_path, ["seed=0,1,2"])
    assert overrides == ["tasks=digits", "strategy.lr=0.002", "hydra/launcher=submitit_slurm",
                         "hydra.launcher.timeout_min=5", "hydra/sweeper=basic", "seed=0,1,2",
                         f"hydra.sweep.dir={tmp_path / 'best'}"]
    assert out == tmp_path / "best"
    with pytest.raises(best.ClBenchError, match="search.trial"):
        best.best_command(tmp_path, ["search.trial=1"])


def test_the_best_runs_of_a_preset_that_selects_optuna_use_hydras_plain_sweeper():
    """experiment=split_mnist_tuned selects the Optuna sweeper itself: clbench-best's
    ``hydra/sweeper=basic`` must win, or its seeds would become a search on validation data."""
    from hydra import compose, initialize_config_dir

    from cl_bench.composition import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        search = compose("config", ["experiment=split_mnist_tuned", "strategy=er"],
                         return_hydra_config=True)
        plain = compose("config", ["experiment=split_mnist_tuned", "strategy=er",
                                   "hydra/sweeper=basic"], return_hydra_config=True)
    assert search.hydra.sweeper._target_.endswith("ClBenchOptunaSweeper")
    assert search.hydra.sweeper.n_trials == 12
    assert plain.hydra.sweeper._target_.endswith("BasicSweeper")
    assert plain.tasks.n_val == 100 and plain.tasks.scenario == "class_il"
