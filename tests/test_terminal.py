"""What a user sees in the terminal: --help from conf/, progress per task, rows, the summary."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn

from cl_bench.progress import StepLogLines, TaskProgressBar, row_line
from cl_bench.summary import job_line, run_summary

ROOT = Path(__file__).resolve().parents[1]
TINY = ["tasks.size=32", "tasks.n_train=4", "tasks.n_val=1", "tasks.n_test=2", "backbone=vit3d_tiny",
        "backbone.weights=null", "backbone.num_layers=4", "train.max_steps=4",
        "train.log_every_n_steps=2", "logger=none"]


def _clbench(tmp_path, *args, timeout=600):
    # COLUMNS pinned: lines wrap to it (pytest-xdist workers may inherit a narrow one)
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path),
               COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "cl_bench.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_group_option_of_conf_with_its_meaning(tmp_path):
    proc = _clbench(tmp_path, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    options = [(p.parent.name, p.stem) for p in (ROOT / "conf").glob("*/*.yaml")]
    assert len(options) > 40
    for group, option in options:
        assert re.search(rf"^\s+\*?{re.escape(option)}\s+\S", out, re.M), (group, option)
        assert f"\n  {group}\n" in out
    # defaults marked, the usual commands and the completion hint present
    for default in ("swin_unetr", "lora", "brain_seg_age", "cpu", "csv"):
        assert re.search(rf"^\s+\*{default}\s", out, re.M), default
    assert "clbench -m experiment=brain_mri_fm" in out and "clbench-report" in out
    assert 'eval "$(clbench -sc install=bash)"' in out
    assert "Sequential full fine-tuning (lower bound): backbone + current head train." in out
    # every key of the schema's dataclasses is named (generated, not typed by hand)
    import dataclasses

    from cl_bench.config import EvalConfig, HardwareConfig, TrainConfig
    flat = " ".join(out.split())
    for prefix, schema in (("train", TrainConfig), ("hardware", HardwareConfig),
                           ("eval", EvalConfig)):
        names = ", ".join(f.name for f in dataclasses.fields(schema))
        assert f"{prefix}.{{{names}}}" in flat, prefix
    # the search keys (issue 27): the objective, its statistics and every key of the sweeper's
    # config file, with its comment
    from omegaconf import OmegaConf
    sweeper = OmegaConf.load(ROOT / "conf" / "hydra" / "sweeper" / "optuna.yaml")
    for key in [f"hydra.sweeper.{k}" for k in sweeper if not k.startswith("_")] + [
            "search.objective", "final_average", "clbench-best <sweep dir> seed=0,1,2"]:
        assert key in out, key
    assert "hydra.sweeper.n_trials         trials in the study in all" in out
    # Hydra's own --help path (taken when overrides are given) prints the same text
    hydra_path = _clbench(tmp_path, "seed=1", "--help", timeout=120)
    assert hydra_path.returncode == 0 and hydra_path.stdout.strip() == out.strip()


def test_a_plain_run_logs_steps_rows_and_ends_with_the_summary(tmp_path):
    """Not a terminal (as under SLURM or CI): plain lines, no carriage-return bars."""
    proc = _clbench(tmp_path, "strategy=lora", "train.progress_bar=true", *TINY,
                    f"results_dir={tmp_path}/r")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "\r" not in out and "Epoch" not in out and "v_num" not in out
    assert re.search(r"^task 1/2 tumour_seg step 2/4 loss [\d.]+ [\d.]+ it/s ETA \d\d:\d\d$", out, re.M)
    assert re.search(r"^task 2/2 brain_age step 4/4 loss ", out, re.M)
    # (wrapped between tasks where the line is wider than the terminal: COLUMNS, else 100)
    assert re.search(r"^row init: tumour_seg Dice [\d.]+,(?: |\n    )brain_age MAE [\d.]+ years "
                     r"\(predicting the mean: [\d.]+\) \([\d.]+ s\)$", out, re.M)
    assert "row after_brain_age:" in out
    # the summary: R with direction and units, the CL metrics per group, trainable %, paths
    (run_dir,) = (tmp_path / "r" / "brain_seg_age" / "lora").iterdir()
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    assert "Dice ↑" in out and "MAE (years) ↓" in out
    assert re.search(rf"^after_tumour_seg\s+{R.loc['after_tumour_seg', 'tumour_seg']:.3f}\s", out, re.M)
    for name in ("MFN", "MFT", "MAA", "BWT gem", "BWT sefe", "forgetting", "FWT"):
        assert name in out
    assert re.search(r"^trainable:\s+tumour_seg [\d.]+ % \([\d,]+ params: adapters [\d,]+ = "
                     r"[\d.]+ % of the backbone, head [\d,]+\),\s+brain_age", out, re.M)
    files = "heatmap.png, matrix.csv, matrix_val.csv, probes.json, metrics.json"
    assert (f"files: {run_dir}/{{{files}}}" in out  # one line, or the names on the next
            or f"files: {run_dir}/\n    {files}" in out)
    assert ": complete, wall time" in out
    # the same summary is in cli.log
    assert "MFN" in (run_dir / "cli.log").read_text()


#: the main job (``make run``: strategy=lora tasks=brain_seg_age, the Swin backbone and its
#: shipped weights) on 4 subjects per task and 2 steps
MAIN_JOB_SMALL = ["strategy=lora", "tasks=brain_seg_age", "tasks.n_train=4",
                  "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
                  "tasks.n_val=1", "tasks.n_test=2", "train.max_steps=2",
                  "train.log_every_n_steps=1"]


def _table_widths(text: str) -> set[int]:
    """The widths of the tables (tabulate's rule lines ``----  -----``) printed in ``text``."""
    return {len(ln) for ln in text.splitlines() if re.fullmatch(r"-+(  -+)+", ln)}


def test_the_main_job_is_quiet_and_no_line_is_wider_than_the_terminal(tmp_path):
    """``make run`` on a fresh install (matplotlib's font cache not built yet), shrunk: no
    "generated new fontManager", the weight-loading line in cli.log only, and no line but a
    table's wider than the terminal (COLUMNS=100; the clone's path taken as ~/cl_bench, as a
    path is never broken)."""
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path),
               MPLCONFIGDIR=str(tmp_path / "mpl"), COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", *MAIN_JOB_SMALL,
                           f"results_dir={tmp_path}/results"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert list((tmp_path / "mpl").glob("fontlist*.json"))  # this run built the font cache
    assert "fontManager" not in out
    assert "Swin encoder tensors" not in out
    (run_dir,) = (tmp_path / "results" / "brain_seg_age" / "lora").iterdir()
    assert "loaded 126 Swin encoder tensors" in (run_dir / "cli.log").read_text()
    assert re.search(r"^row after_brain_age: tumour_seg Dice [\d.]+,$", out, re.M)
    assert re.search(r"^    brain_age MAE [\d.]+ years \(predicting the mean: [\d.]+\) "
                     r"\([\d.]+ s\)$", out, re.M)
    assert re.search(r"^  brain_age: MAE [\d.]+ years \(after_brain_age\) is (worse|better|no "
                     r"better) than predicting the mean \([\d.]+ years\)$", out, re.M)
    tables = _table_widths(out)
    wide = [ln for ln in out.replace(str(tmp_path), "~/cl_bench").splitlines()
            if len(ln) > 100 and len(ln) not in tables]
    assert not wide, wide


def _wall_time(text: str) -> float:
    """The seconds of the summary's ``wall time 2 min 06 s`` / ``wall time 2.8 s``."""
    found = re.search(r"wall time (?:(\d+) min (\d+) s|([\d.]+) s)", text)
    assert found, text[-3000:]
    minutes, seconds, plain = found.groups()
    return float(plain) if plain else 60 * int(minutes) + int(seconds)


def test_an_interrupted_runs_wall_time_counts_the_task_cut_short(tmp_path):
    """Ctrl-C in task 1: the summary's wall time covers the time spent in it (no task had
    finished, so the finished tasks alone would give no time at all)."""
    env = dict(os.environ, CLBENCH_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path))
    run_dir = tmp_path / "run"
    # SIGINT as a terminal's foreground process gets it, however pytest was started
    proc = subprocess.Popen([sys.executable, "-m", "cl_bench.cli", "strategy=seq_lp", *TINY,
                             "train.max_steps=100000", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not (run_dir / "matrix.csv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    seen = time.time()  # the init row is written: the run's clock started before this
    time.sleep(6)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    stopped = time.time()
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "INCOMPLETE: 0/2 tasks" in out
    assert _wall_time(out) >= stopped - seen - 0.1
    timing = (run_dir / "timing.json").read_text()
    assert '"total_s"' in timing


def test_a_multirun_prints_one_line_per_job_and_the_report_command(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _clbench(tmp_path, "-m", "strategy=seq_lp", "seed=0,1", *TINY,
                    f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"\s+seq_lp seed [01]: tumour_seg Dice", ln)]
    assert len(lines) == 2 and all("-> " + str(sweep) in ln for ln in lines)
    assert f"clbench-report {sweep}" in proc.stdout
    assert "R: after" not in proc.stdout  # the full summary stays in each job's cli.log
    assert "MFN" in (sweep / "0_seq_lp_seed0" / "cli.log").read_text()


def test_summary_of_an_interrupted_run_shows_the_rows_it_has(tmp_path):
    pd.DataFrame({"a": [0.1, 0.8], "b": [20.0, 20.0]}, index=["init", "after_a"]).rename_axis(
        "row").to_csv(tmp_path / "matrix.csv")
    (tmp_path / "metrics.json").write_text(
        '{"complete": false, "tasks_completed": 1, "num_tasks": 2, "strategy": "seq_ft", '
        '"tasks": "s", "seed": 3, "units": {"a": {"metric": "dice", "units": null, '
        '"higher_is_better": true}, "b": {"metric": "mae", "units": "years", '
        '"higher_is_better": false}}}')
    text = run_summary(tmp_path)
    assert "INCOMPLETE: 1/2 tasks" in text and "seq_ft on s" in text
    assert re.search(r"^after_a\s+0\.800\s+20\.0$", text, re.M)
    assert "Dice ↑" in text and "MAE (years) ↓" in text
    assert job_line(tmp_path) == (f"seq_ft seed 3: a Dice 0.800, b MAE 20.0 years "
                                  f"[after_a, incomplete] -> {tmp_path}")
    assert "no row of R" in run_summary(tmp_path / "nothing")


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback, steps=7):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6, 3)), batch_size=2)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=isinstance(callback, TaskProgressBar))
    trainer.fit(_Tiny(), data)


def test_the_bar_counts_steps_across_epochs_against_max_steps(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    bar = TaskProgressBar(1, 3, "brain_age", 7)  # 3 batches per epoch: 7 steps span 3 epochs
    _fit(bar)
    text = out.getvalue()
    assert re.search(r"task 2/3 brain_age │ step 7/7 │ loss [\d.]+ │ [\d.]+ it/s │ ETA 00:00", text)
    assert "Epoch" not in text and "v_num" not in text


def test_plain_lines_every_n_steps(caplog):
    with caplog.at_level("INFO", logger="cl_bench.progress"):
        _fit(StepLogLines(0, 2, "tumour_seg", 7, every=3))
    steps = re.findall(r"task 1/2 tumour_seg step (\d+)/7 loss", caplog.text)
    assert steps == ["3", "6", "7"]


def test_the_smoothed_loss_reads_step_losses_only_when_shown():
    from cl_bench.progress import _StepStats
    stats = _StepStats(10)
    for v in (1.0, 2.0, 3.0):
        stats.update(torch.tensor(v))  # kept as tensors until read
    assert len(stats._pending) == 3
    assert stats.loss == pytest.approx(1.29)  # 1 -> 0.9 + 0.2 -> 0.99 + 0.3
    stats.update({"loss": torch.tensor(4.0)})
    assert stats.fields(4)[1] == "loss 1.561" and not stats._pending
    for _ in range(2500):
        stats.update(torch.tensor(0.0))
    assert len(stats._pending) < 1000 and stats.loss < 1e-9


def test_row_line_names_metric_units_and_time():
    class T:
        def __init__(self, name, metric, units):
            self.name, self.metric, self.units = name, metric, units
    line = row_line("after_tumour_seg", [T("tumour_seg", "dice", None), T("brain_age", "mae", "years")],
                    [0.61234, 16.04], 4.12)
    assert line == "row after_tumour_seg: tumour_seg Dice 0.612, brain_age MAE 16.0 years (4.1 s)"


def test_a_detail_goes_to_the_log_file_and_to_the_terminal_only_when_verbose(tmp_path):
    """What a checkpoint held (:func:`cl_bench.models.weights.log_detail`): in cli.log, not on
    the terminal, unless the logger is at DEBUG (``hydra.verbose=cl_bench``)."""
    import logging

    from cl_bench.models.weights import log_detail

    root, logger = logging.getLogger(), logging.getLogger("cl_bench.models.test_detail")
    terminal = io.StringIO()
    handlers = [logging.StreamHandler(terminal), logging.FileHandler(tmp_path / "cli.log")]
    saved = root.level, list(root.handlers)
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    try:
        log_detail(logger, "loaded %d Swin encoder tensors", 126)
        assert "loaded 126 Swin encoder tensors" in (tmp_path / "cli.log").read_text()
        assert terminal.getvalue() == ""
        logger.setLevel(logging.DEBUG)  # what hydra.verbose=cl_bench does to cl_bench.*
        log_detail(logger, "loaded %d encoder tensors", 7)
        assert terminal.getvalue() == "loaded 7 encoder tensors\n"
        assert "loaded 7 encoder tensors" in (tmp_path / "cli.log").read_text()
    finally:
        logger.setLevel(logging.NOTSET)
        for h in handlers:
            h.close()
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
