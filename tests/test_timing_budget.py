"""Where a run's minutes went: ``timing.json``'s phases (the stream's and the model's build
beside the evaluation, training and probes) and the end-of-run summary's time budget, on real
runs of a two-task digits stream (a few seconds each) and on hand-written files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from cl_bench import runner
from cl_bench.errors import Interrupted
from cl_bench.runner import run
from cl_bench.summary import run_summary, time_budget
from conftest import CONF, THREADS

#: two tasks of 16 training images, two steps each
FAST = ["tasks=digits", "tasks.n_tasks=2", "tasks.n_train_per_class=8",
        "tasks.n_test_per_class=4", "backbone.weights=null", "train.max_steps=2",
        "train.progress_bar=false", "logger=none", "hardware.precision=32-true",
        f"hardware.num_threads={THREADS}"]
TASKS = ["digits_0_1", "digits_2_3"]


@pytest.fixture
def digits_cfg():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=FAST)


def timing(run_dir: Path) -> dict:
    return json.loads((run_dir / "timing.json").read_text())


def phases(t: dict) -> float:
    """The seconds of every phase ``timing.json`` records."""
    return (t["data_s"] + t["build_s"] + t["init_eval_s"]
            + sum(v["train_s"] + v["eval_s"] + v["probe_s"] for v in t["tasks"].values()))


def test_a_run_records_its_build_phases_and_the_summary_shows_every_phase(digits_cfg,
                                                                           tmp_path):
    run(digits_cfg, tmp_path)
    t = timing(tmp_path)
    assert t["data_s"] > 0 and t["build_s"] > 0 and t["resumed"] == 0
    assert list(t["tasks"]) == TASKS and not any("continued" in v for v in t["tasks"].values())
    # the phases fit in the run's clock (what is left is files, figures and checkpoints; on a
    # 2-step run that share depends on the machine's load, so no lower bound is asserted)
    assert 0 < phases(t) <= t["total_s"]

    text = run_summary(tmp_path, width=100)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("time ")]
    block = text[text.index(line):].split("\nfiles:")[0]
    assert all(len(ln) <= 100 for ln in block.splitlines())
    flat = " ".join(block.split())  # the wrapped block as one line
    for phase in ("data", "model build", "initial evaluation", "digits_0_1 training",
                  "digits_2_3 training", "evaluation", "probes",
                  "other (files, figures, checkpoints)"):
        assert re.search(rf"\b{re.escape(phase)} [\d.]+ s\b", flat), (phase, flat)
    assert re.search(r"digits_0_1 training [\d.]+ s \(2 steps, [\d.]+ m?s/step\)", flat), flat
    assert "unfinished work" not in flat


def test_a_resumed_run_adds_its_build_to_the_recorded_phases(digits_cfg, tmp_path):
    run(digits_cfg, tmp_path)
    first = timing(tmp_path)
    run(digits_cfg, tmp_path)  # a resume of the finished run: builds again, trains nothing
    second = timing(tmp_path)
    assert second["resumed"] == 1
    assert second["data_s"] > first["data_s"] and second["build_s"] > first["build_s"]
    assert second["total_s"] > first["total_s"] + (second["data_s"] - first["data_s"])
    assert second["tasks"] == first["tasks"] and second["init_eval_s"] == first["init_eval_s"]
    assert phases(second) <= second["total_s"]
    assert "other (files, figures, checkpoints, unfinished work)" in " ".join(
        run_summary(tmp_path, width=100).split())


@pytest.mark.parametrize("cut", [0, 1])
def test_a_stopped_run_shows_the_phases_done_and_its_resume_sums_them(digits_cfg, tmp_path,
                                                                      monkeypatch, cut):
    """Ctrl-C in task ``cut + 1``: the summary shows the phases before it; the resume (from
    ``state.pt`` after task 1, from ``timing.json`` alone in task 1) adds its build to them."""
    fit_task = runner.fit_task

    def ctrl_c_in_task(cfg, run_dir, model, strategy, task, t, *args):
        if t == cut:
            raise KeyboardInterrupt
        return fit_task(cfg, run_dir, model, strategy, task, t, *args)

    monkeypatch.setattr(runner, "fit_task", ctrl_c_in_task)
    with pytest.raises(Interrupted):
        run(digits_cfg, tmp_path)
    stopped = timing(tmp_path)
    assert list(stopped["tasks"]) == TASKS[:cut] and stopped["data_s"] > 0
    assert phases(stopped) <= stopped["total_s"]
    flat = " ".join(run_summary(tmp_path, width=100).split())
    assert "data " in flat and "initial evaluation" in flat and "digits_2_3 training" not in flat
    assert ("digits_0_1 training" in flat) == (cut == 1)
    assert "other (files, figures, checkpoints, unfinished work)" in flat

    monkeypatch.setattr(runner, "fit_task", fit_task)
    run(digits_cfg, tmp_path)
    resumed = timing(tmp_path)
    assert resumed["resumed"] == 1 and list(resumed["tasks"]) == TASKS
    assert resumed["data_s"] > stopped["data_s"] and resumed["build_s"] > stopped["build_s"]
    assert resumed["total_s"] > stopped["total_s"]
    assert phases(resumed) <= resumed["total_s"]


def _write_run(run_dir: Path, timing: dict | None) -> None:
    """A finished one-task run's files, with ``timing`` as its ``timing.json``."""
    pd.DataFrame({"a": [0.1, 0.8]}, index=["init", "after_a"]).rename_axis("row").to_csv(
        run_dir / "matrix.csv")
    (run_dir / "metrics.json").write_text(json.dumps(
        {"complete": True, "tasks_completed": 1, "num_tasks": 1, "strategy": "seq_ft",
         "tasks": "s", "seed": 0,
         "units": {"a": {"metric": "dice", "units": None, "higher_is_better": True}}}))
    if timing is not None:
        (run_dir / "timing.json").write_text(json.dumps(timing))


def test_the_summary_of_an_older_timing_file_shows_the_phases_it_has(tmp_path):
    # written before data_s and build_s existed (total_s then began after the build)
    _write_run(tmp_path, {"tasks": {"a": {"train_s": 60.0, "eval_s": 3.0, "probe_s": 1.0,
                                          "steps": 100}},
                          "init_eval_s": 2.0, "total_s": 100.0, "resumed": 0,
                          "peak_rss_mb": 500.0})
    text = run_summary(tmp_path, width=200)
    assert ("time 1 min 40 s: initial evaluation 2.0 s, a training 1 min 00 s (100 steps, "
            "0.60 s/step), evaluation 3.0 s, probes 1.0 s, other (files, figures, "
            "checkpoints) 34.0 s") in text
    assert "data " not in text and "model build" not in text
    assert "wall time 1 min 40 s" in text  # the first line keeps the total


def test_the_time_budget_wraps_and_reads_partial_files():
    full = {"data_s": 58.0, "build_s": 3.1, "init_eval_s": 27.0, "total_s": 2112.0,
            "tasks": {"tumour_seg": {"train_s": 884.0, "eval_s": 39.0, "probe_s": 25.0,
                                     "steps": 600},
                      "brain_age": {"train_s": 1000.0, "eval_s": 40.0, "probe_s": 0.0,
                                    "steps": 600, "continued": True}}}
    text = time_budget(full, width=60)
    assert all(len(ln) <= 60 for ln in text.splitlines())
    flat = " ".join(text.split())
    assert flat.startswith("time 35 min 12 s: data 58.0 s, model build 3.1 s, initial "
                           "evaluation 27.0 s, tumour_seg training 14 min 44 s (600 steps, "
                           "1.47 s/step), evaluation 39.0 s, probes 25.0 s, brain_age training "
                           "16 min 40 s (600 steps, continued after a stop), evaluation 40.0 s,")
    assert flat.endswith("other (files, figures, checkpoints) 35.9 s")  # probes off: not shown
    assert "unfinished work" in time_budget(full, finished=False)
    fast = {"tasks": {"a": {"train_s": 0.5, "steps": 40}}}  # no total: no remainder
    assert time_budget(fast, width=100) == "time ?: a training 0.5 s (40 steps, 12.5 ms/step)"
    # nothing to break down: no line (the summary's first line has the total)
    assert time_budget({}) is None and time_budget({"total_s": 10.0, "tasks": {}}) is None
    assert time_budget({"total_s": "?", "data_s": None}) is None
