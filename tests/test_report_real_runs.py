"""clbench-report and ``clbench ls`` on two real runs of the seconds-long digits stream: a full
run and a ``+tasks.max_tasks=1`` run of the same config (issue 39: they became one group)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cl_bench.report.cli import write_report
from cl_bench.summary import fmt_value
from conftest import THREADS

#: two steps per task, the CSV logger on every step (its losses feed losses.png)
FAST = ["tasks=digits", "train.max_steps=2", "train.batch_size=16", "train.log_every_n_steps=1",
        "train.progress_bar=false", "logger=csv", "eval.probes=false",
        "tasks.n_test_per_class=10", f"hardware.num_threads={THREADS}"]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    for name, extra in (("full", []), ("one_task", ["+tasks.max_tasks=1"])):
        proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", *FAST, *extra,
                               f"results_dir={root}", f"hydra.run.dir={root / 'runs' / name}"],
                              cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "runs"


def test_report_keeps_a_max_tasks_run_apart_from_the_full_run(real_runs, tmp_path):
    summary, md, _ = write_report([real_runs], tmp_path / "out")
    assert list(summary["n"]) == [1, 1]
    assert "Separated by: tasks.max_tasks." in md
    one = json.loads((real_runs / "one_task" / "metrics.json").read_text())
    mfn = one["groups"]["accuracy"]["final_average"]
    row = summary.set_index("tasks.max_tasks", drop=False).loc[1]
    assert row["final_average accuracy mean"] == pytest.approx(mfn)
    line = next(ln for ln in md.splitlines() if ln.startswith("| G2 "))
    assert f" {fmt_value(mfn)} " in line and " 1 " in line
    assert (tmp_path / "out" / "losses.png").stat().st_size > 10_000  # the CSV logger's losses


def test_clbench_ls_lists_both_runs(real_runs):
    proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", "ls", str(real_runs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines[1:]] == [["full", "complete", "3/3"],
                                                    ["one_task", "complete", "1/1"]]
    full = json.loads((real_runs / "full" / "metrics.json").read_text())
    assert f"accuracy {fmt_value(full['groups']['accuracy']['final_average'])}" in lines[1]
    assert lines[2].rstrip().endswith("+tasks.max_tasks=1")
    assert "results_dir" not in proc.stdout and "hardware.num_threads" not in proc.stdout
