"""``clbench ls [DIR]`` (cl_bench.runs_list): one aligned line per run with its status, tasks
done, MFN and key overrides, on run directories written as the runner writes them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from cl_bench.config import RUN_LOCAL_KEYS
from cl_bench.runs_list import find_runs, listing, run_overrides, run_status
from cl_bench.summary import fmt_value
from test_report_trust import ACCURACY, DIGITS, write_run

FULL = [[0.5, 0.5, 0.5], [0.9125, 0.5, 0.5], [0.9125, 0.875, 0.5], [0.9125, 0.875, 0.8875]]
OVERRIDES = ["tasks=digits", "results_dir=/tmp/x", "train.progress_bar=false",
             "hardware.num_threads=1", "hydra.run.dir=/tmp/x/run", "strategy=lora"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def results(root: Path) -> Path:
    """Five runs: complete, interrupted (resumable), failed (before any checkpoint), running
    (its lock record names this process) and killed (its lock record names a dead process)."""
    write_run(root, "digits/lora/a_complete", FULL, DIGITS, [ACCURACY] * 3,
              overrides=OVERRIDES + ["+tasks.max_tasks=3"])
    for name in ("b_interrupted", "c_failed", "d_running", "e_killed"):
        run = write_run(root, f"digits/lora/{name}", FULL[:2], DIGITS, [ACCURACY] * 3,
                        overrides=OVERRIDES + ["seed=1"])
        if name != "c_failed":
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "config.yaml").write_text("seed: 1\n")
        if name in ("d_running", "e_killed"):
            pid = os.getpid() if name == "d_running" else _dead_pid()
            (run / ".clbench.lock.json").write_text(json.dumps(
                {"host": socket.gethostname(), "pid": pid, "since": "2026-12-07 10:00:00"}))
    (root / "digits" / "lora" / "a_complete" / "report").mkdir()  # not another run
    return root


def test_each_run_once_with_its_status(tmp_path):
    root = results(tmp_path / "results")
    runs = find_runs(root)
    assert [r.name for r in runs] == ["a_complete", "b_interrupted", "c_failed", "d_running",
                                      "e_killed"]
    assert [run_status(r) for r in runs] == ["complete", "interrupted", "failed", "running",
                                             "interrupted"]


def test_overrides_leave_out_the_run_local_keys(tmp_path):
    root = results(tmp_path / "results")
    run = root / "digits" / "lora" / "a_complete"
    assert run_overrides(run, RUN_LOCAL_KEYS) == ["tasks=digits", "strategy=lora",
                                                  "+tasks.max_tasks=3"]
    assert "results_dir=/tmp/x" in run_overrides(run)  # only Hydra's own keys always hidden


def test_listing_is_one_aligned_line_per_run(tmp_path):
    root = results(tmp_path / "results")
    lines = listing(root, RUN_LOCAL_KEYS).splitlines()
    assert len(lines) == 6 and lines[0].split() == ["run", "status", "tasks", "MFN", "overrides"]
    cells = {ln.split()[0]: ln for ln in lines[1:]}
    mfn = fmt_value((0.9125 + 0.875 + 0.8875) / 3)
    assert cells["digits/lora/a_complete"].split()[1:] == [
        "complete", "3/3", "accuracy", mfn, "tasks=digits", "strategy=lora",
        "+tasks.max_tasks=3"]
    assert cells["digits/lora/b_interrupted"].split()[1:5] == ["interrupted", "1/3", "accuracy",
                                                               fmt_value(0.9125)]
    for column in ("status", "tasks", "MFN", "overrides"):  # aligned
        at = lines[0].index(column)
        assert all(ln[at - 2:at] == "  " and ln[at] != " " for ln in lines), column


def test_clbench_ls_command(cli, tmp_path):
    results(tmp_path / "results")  # cli runs in tmp_path: results/ is the default
    proc = cli("ls")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["run", "status", "tasks", "MFN", "overrides"]
    assert "results_dir" not in proc.stdout and "hydra.run.dir" not in proc.stdout
    statuses = [ln.split()[1] for ln in proc.stdout.splitlines()[1:]]
    assert statuses == ["complete", "interrupted", "failed", "running", "interrupted"]
    assert "+tasks.max_tasks=3" in proc.stdout
    proc = cli("ls", str(tmp_path / "results" / "digits" / "lora" / "c_failed"))
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].split()[:2] == [".", "failed"]
    for args, needle in ((["ls", str(tmp_path / "nope")], "no such directory"),
                         (["ls", "a", "b"], "unexpected argument")):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("clbench ls: error:") and needle in lines[0]
    (tmp_path / "empty").mkdir()
    proc = cli("ls", str(tmp_path / "empty"))
    assert proc.returncode == 0 and proc.stdout.strip() == f"no runs under {tmp_path / 'empty'}"
