"""User mistakes end with one clear message and a non-zero exit code, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

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


@pytest.mark.parametrize("args, needles", [
    (["+train.max_stpes=10"], ["train.max_stpes: unknown key", "did you mean train.max_steps?"]),
    (["++train.max_stpes=10"], ["train.max_stpes: unknown key", "did you mean train.max_steps?"]),
    (["+foo=1"], ["foo: unknown key", "valid keys: seed, train"]),
    (["+hardware.num_thread=1"], ["hardware.num_thread", "did you mean hardware.num_threads?"]),
    (["+eval.task=oracle"], ["eval.task: unknown key", "did you mean eval.task_id?"]),
    (["+tasks.max_tsks=1"], ["tasks.max_tsks: unknown key", "did you mean tasks.max_tasks?"]),
    (["+strategy.rnak=4"], ["strategy.rnak: unknown key", "did you mean strategy.rank?"]),
])
def test_a_plus_key_is_checked_like_any_other(cli, tmp_path, args, needles):
    """Hydra adds a ``+`` key to any config, a typed one too: the run refuses it before any
    work, in one line naming the key and the closest valid one."""
    proc = cli(f"results_dir={tmp_path}/results", "logger=none", *args)
    assert_clear_error(proc, *needles)
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def _help_keys() -> list[str]:
    """Every key ``clbench --help`` lists (its ``Keys:`` paragraph, then the search's
    ``hydra.sweeper.*`` lines), as it spells them."""
    from cl_bench import cli as clbench_cli

    text = clbench_cli._help()
    para = " ".join(text.split("Keys: ", 1)[1].split("(every stream", 1)[0].split())
    keys = []
    for part in re.findall(r"[a-z_]+\.\{[^}]*\}|[a-z_.]+", para):
        if "{" in part:
            section, names = part.split(".{")
            keys += [f"{section}.{n.strip()}" for n in names.rstrip("}").split(",")]
        elif part not in ("and",):
            keys.append(part)
    keys += re.findall(r"^  (hydra\.sweeper\.[a-z_]+)", text, re.M)
    return keys


def test_the_help_lists_the_keys_this_test_checks():
    keys = _help_keys()
    for key in ("seed", "train.max_steps", "hardware.num_threads", "eval.probes",
                "search.objective", "resume", "tasks.n_val", "tasks.max_tasks",
                "tasks.n_val_by_task", "hydra.sweeper.n_trials"):
        assert key in keys, keys


@pytest.mark.parametrize("key", _help_keys())
def test_every_key_the_help_lists_is_accepted_as_it_spells_it(cli, tmp_path, key):
    """``tasks.max_tasks=1`` as ``--help`` writes it, not only ``+tasks.max_tasks=1``: each key
    composes with a value of its own kind (``--cfg`` prints the config without running)."""
    from hydra import compose, initialize_config_dir

    import cl_bench.cli  # noqa: F401  (the resolvers)
    from conftest import CONF

    value = {"tasks.max_tasks": 1, "tasks.n_val_by_task": None, "resume": None}.get(key, "same")
    if value == "same":
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            sweeper = ["hydra/sweeper=optuna"] if key.startswith("hydra.") else []
            cfg = compose("config", overrides=sweeper, return_hydra_config=bool(sweeper))
            value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = None
    text = ("null" if value is None else str(value).lower() if isinstance(value, bool)
            else str(value))
    args = (["--cfg", "hydra", "hydra/sweeper=optuna"] if key.startswith("hydra.")
            else ["--cfg", "job"])
    proc = cli(*args, "tasks=digits", f"{key}={text}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{key.rsplit('.', 1)[-1]}: {text if text != 'null' else 'null'}" in proc.stdout, (
        proc.stdout[-3000:])


@pytest.mark.parametrize("spelling", ["tasks.max_tasks=1", "+tasks.max_tasks=1"])
def test_max_tasks_runs_the_first_task_only_however_it_is_spelt(cli, tmp_path, spelling):
    proc = cli("tasks=digits", "train.max_steps=1", "train.batch_size=16", "logger=none",
               "train.progress_bar=false", "hardware.num_threads=1", "eval.probes=false",
               f"hydra.run.dir={tmp_path}/run", spelling)
    assert proc.returncode == 0, proc.stderr[-3000:]
    R = pd.read_csv(tmp_path / "run" / "matrix.csv", index_col=0)
    assert list(R.index) == ["init", "after_digits_0_1"] and list(R.columns) == ["digits_0_1"]


def test_several_values_without_multirun_keep_hydras_hint(cli, tmp_path):
    proc = cli(f"results_dir={tmp_path}/results", "strategy=seq_ft,ewc")
    assert_clear_error(proc, "strategy=seq_ft,ewc", "add --multirun (-m)",
                       "strategy=[seq_ft,ewc]")
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr


def _unwritable_dirs(tmp_path):
    """``(id, results_dir)``: places no run directory can be made in."""
    (tmp_path / "afile").write_text("x")
    cases = [("under_a_file", f"{tmp_path}/afile/sub")]
    if Path("/proc/self").is_dir():
        cases.append(("proc", "/proc/nope"))  # root may write anywhere, but not there
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "read_only"
        ro.mkdir(mode=0o555)
        cases += [("read_only", str(ro)), ("below_read_only", f"{ro}/sub")]
    return cases


@pytest.mark.parametrize("multirun", [False, True])
def test_a_results_dir_that_cannot_be_written_is_one_line(cli, tmp_path, multirun):
    """``results_dir=/proc/nope`` ended in a 66-line traceback (Hydra's mkdir): the check made
    and removes a directory there first, so what permission bits do not say is caught too."""
    for name, where in _unwritable_dirs(tmp_path):
        proc = cli(*(["-m"] if multirun else []), f"results_dir={where}", "tasks=digits",
                   "train.max_steps=1", "logger=none")
        assert_clear_error(proc, "results_dir", where)
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, (name,
                                                                                 proc.stderr)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_version_is_cl_benchs(cli):
    from importlib.metadata import version

    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"clbench {version('cl_bench')}"), proc.stdout


def test_more_threads_than_cpus_are_capped_with_one_line(cli, tmp_path, monkeypatch):
    """``hardware.num_threads=1000`` on 2 cores did not finish 2 digits steps in 300 s: the
    count is capped to the CPUs the run may use, and one line says so."""
    import torch

    def usable_cpus():
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    asked = []
    real = torch.set_num_threads
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n: (asked.append(n), real(min(n, usable_cpus())))[1])
    try:
        proc = cli("tasks=digits", "train.max_steps=1", "train.batch_size=16", "logger=none",
                   "train.progress_bar=false", "eval.probes=false", "+tasks.max_tasks=1",
                   "hardware.num_threads=1000", f"hydra.run.dir={tmp_path}/run")
    finally:
        real(before)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert asked and max(asked) == usable_cpus() <= (os.cpu_count() or 1), asked
    said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "num_threads" in ln]
    assert said == [f"hardware.num_threads=1000 capped to {usable_cpus()}: this machine gives "
                    f"the run {usable_cpus()} CPU{'s' if usable_cpus() > 1 else ''} (more "
                    "threads than CPUs only wait on each other)"], proc.stdout[-2000:]
