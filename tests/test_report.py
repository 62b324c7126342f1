"""clbench-report on hand-made run directories with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_bench.metrics import cl_metrics
from cl_bench.report.cli import write_report
from cl_bench.report.groups import summarise
from cl_bench.report.load import load_runs

TASKS = ["tumour_seg", "brain_age"]
UNITS = {"tumour_seg": {"metric": "dice", "units": "", "higher_is_better": True},
         "brain_age": {"metric": "mae", "units": "years", "higher_is_better": False}}


def fake_run(root: Path, name: str, strategy: str, seed: int, R: list[list[float]],
             max_steps: int = 600, complete: bool = True, tasks: list[str] = TASKS) -> Path:
    """A run directory as clbench writes it, with R = [init row, after task 1, ...]; ``tasks``
    renames the two tasks (a second stream)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    rows = ["init"] + [f"after_{t}" for t in tasks][:len(R) - 1]
    pd.DataFrame(R, index=pd.Index(rows, name="row"), columns=tasks).to_csv(run / "matrix.csv")
    trained = np.array(R[1:], float)
    metrics = cl_metrics(trained, np.array(R[0], float), higher_is_better=[True, False],
                         task_names=tasks, metric_names=["dice", "mae"])
    seg, age = tasks
    metrics.update(units={seg: UNITS["tumour_seg"], age: UNITS["brain_age"]},
                   strategy=strategy, seed=seed, tasks="toy", backbone="vit",
                   details={r: {seg: {"dice": v[0]}, age: {"mae": v[1],
                                                          "mae_normalised": v[1] / 10}}
                            for r, v in zip(rows, R)})
    assert metrics["complete"] == complete
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "params.json").write_text(json.dumps(
        {"tasks": {"tumour_seg": {"trainable_pct": 10.0},
                   "brain_age": {"trainable_pct": 2.0}}}))
    (run / "timing.json").write_text(json.dumps({"total_s": 100.0 + seed,
                                                 "peak_rss_mb": 1000.0 + 10 * seed}))
    (run / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nresults_dir: /somewhere/{name}\ntrain:\n  max_steps: {max_steps}\n"
        f"strategy:\n  name: {strategy}\n  lr: 0.001\n" +
        ("  rank: 8\n" if strategy == "lora" else "") +
        "tasks:\n  name: toy\n  cache_dir: ${oc.env:HOME}/cache\nbackbone:\n  name: vit\n")
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    fake_run(root, "0_seq_ft_seed0", "seq_ft", 0, [[0.0, 20.0], [0.5, 20.0], [0.3, 10.0]])
    fake_run(root, "1_seq_ft_seed1", "seq_ft", 1, [[0.0, 20.0], [0.7, 20.0], [0.5, 12.0]])
    fake_run(root, "2_lora_seed0", "lora", 0, [[0.0, 20.0], [0.6, 20.0], [0.6, 8.0]])
    fake_run(root, "3_lora_seed1", "lora", 1, [[0.0, 20.0], [0.8, 20.0], [0.8, 6.0]])
    fake_run(root, "4_lora_seed2", "lora", 2, [[0.0, 20.0], [0.9, 20.0]], complete=False)
    bad = root / "5_broken"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    return root


def test_mean_std_over_seeds_per_group_with_partial_runs_shown(sweep):
    runs, skipped = load_runs([sweep])
    assert len(runs) == 5 and len(skipped) == 1 and "5_broken" in skipped[0]
    s = summarise(runs).set_index("strategy")
    assert list(s.index) == ["seq_ft", "lora"]  # seed, paths, lora's own rank: not group keys
    assert s.loc["seq_ft", "tumour_seg dice ↑ mean"] == \
        pytest.approx(0.4)
    assert s.loc["seq_ft", "tumour_seg dice ↑ std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert s.loc["seq_ft", "brain_age mae (years) ↓ mean"] == pytest.approx(11.0)
    assert s.loc["seq_ft", "brain_age mae_normalised ↓ mean"] == pytest.approx(1.1)
    # BWT (GEM) of dice: seq_ft -0.2 in both seeds; forgetting 0.2
    assert s.loc["seq_ft", "bwt_gem dice mean"] == pytest.approx(-0.2)
    assert s.loc["seq_ft", "forgetting_max dice mean"] == pytest.approx(0.2)
    assert s.loc["seq_ft", "tumour_seg dice (just learned) mean"] == pytest.approx(0.6)
    assert s.loc["seq_ft", "trainable % mean"] == pytest.approx(6.0)
    assert s.loc["seq_ft", "wall time (s) mean"] == pytest.approx(100.5)
    assert s.loc["seq_ft", "peak RSS (MB) mean"] == pytest.approx(1005.0)  # seeds 0 and 1
    assert "peak GPU (MB) mean" not in s.columns  # CPU runs: no GPU column
    # the lora group: 2 complete runs + 1 partial, shown as such (not dropped)
    assert s.loc["lora", "runs"] == "3 (1 partial)" and s.loc["lora", "status"] == "partial"
    assert s.loc["lora", "n"] == 3
    assert s.loc["lora", "bwt_gem dice mean"] == pytest.approx(0.0)
    assert s.loc["seq_ft", "status"] == "complete"


def test_a_config_key_that_varies_becomes_a_group_column(tmp_path):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        for steps in (100, 600):
            fake_run(root, f"r{seed}_{steps}", "seq_ft", seed, [[0, 20], [0.5, 20], [0.4, 9]],
                     max_steps=steps)
    s = summarise(load_runs([root])[0])
    assert "train.max_steps" in s.columns
    assert sorted(s["train.max_steps"]) == [100, 600] and set(s["n"]) == {2}


def test_report_files_and_paper_rows(sweep, tmp_path):
    out = tmp_path / "out"
    summary, text, skipped = write_report([sweep], out, "markdown", "brain_mri_fm")
    for name in ("report.md", "report.tex", "report.csv", "runs.csv", "heatmaps.png",
                 "curves.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "paper: LoRA per task" in md and "0.620 ± 0.070" in md and "0.400 ± 0.141" in md
    assert "arXiv 2602.23533" in md
    claims = (out / "claims.md").read_text()  # no seq_lp runs here: b is not measured
    assert "| b       |" not in claims and "- Not measured here: b (no seq_lp runs)" in claims
    assert (out / "claims.csv").stat().st_size > 0 and claims in text
    assert "\\begin{tabular}" in (out / "report.tex").read_text()
    csv = pd.read_csv(out / "report.csv")
    assert set(csv["strategy"]) == {"seq_ft", "lora"}
    assert len(pd.read_csv(out / "runs.csv")) == 5


def test_runs_of_two_streams_share_one_report(sweep, tmp_path):
    fake_run(sweep, "6_seq_ft_other", "seq_ft", 0, [[0.0, 20.0], [0.4, 20.0], [0.2, 9.0]],
             tasks=["other_seg", "other_age"])
    out = tmp_path / "out"
    summary, text, skipped = write_report([sweep], out, "markdown")
    assert (out / "curves.png").stat().st_size > 0 and (out / "heatmaps.png").stat().st_size > 0
    assert "other_seg dice ↑" in text and "tumour_seg dice ↑" in text
    assert len(pd.read_csv(out / "runs.csv")) == 6


def test_cli_prints_table_and_reports_skipped_runs(cli, sweep):
    proc = cli(str(sweep), "--format", "csv", module="cl_bench.report.cli")
    assert proc.returncode == 0, proc.stderr
    assert "tumour_seg dice ↑ mean" in proc.stdout and f"wrote {sweep / 'report'}" in proc.stdout
    assert "skipped" in proc.stderr and "5_broken" in proc.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_paper"])
def test_cli_errors_are_one_line(cli, tmp_path, sweep, case):
    (tmp_path / "empty" / "run").mkdir(parents=True)  # a directory tree without any run
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path / "empty")],
            "unknown_paper": [str(sweep), "--paper", "nope"]}[case]
    proc = cli(*args, module="cl_bench.report.cli")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("clbench-report: error:"), proc.stderr
    needle = {"missing": "cannot read results dir", "empty": "no runs (metrics.json)",
              "unknown_paper": "brain_mri_fm"}[case]
    assert needle in lines[0]


def test_unreadable_dir_is_one_clear_error(cli, tmp_path):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "sub").mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads anything: nothing to test
            pytest.skip("running as root: permissions are not enforced")
        proc = cli(str(locked), module="cl_bench.report.cli")
        assert proc.returncode == 2 and "cannot read results dir" in proc.stderr
    finally:
        locked.chmod(0o755)


def test_permission_error_while_reading_is_one_clear_error(tmp_path, monkeypatch):
    """As root (CI) chmod does not stop reads, so the OS refusal is injected at the read."""
    from cl_bench.errors import ClBenchError

    def refuse(self, pattern):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "rglob", refuse)
    with pytest.raises(ClBenchError, match="cannot read results dir .*Permission denied"):
        load_runs([tmp_path])


def test_task_agnostic_runs_report_retrieval_accuracy_and_its_cost(tmp_path):
    """A task-agnostic strategy's run (metrics.json ``task_agnostic``, per-task
    ``retrieval_ms_per_sample`` in the last row's details) gets both columns, averaged over
    seeds; other strategies get none."""
    root = tmp_path / "sweep"
    fake_run(root, "0_seq_ft_seed0", "seq_ft", 0, [[0.0, 20.0], [0.5, 20.0], [0.3, 10.0]])
    for seed, (acc, ms) in enumerate([(0.75, (10.0, 8.0)), (0.25, (12.0, 6.0))]):
        run = fake_run(root, f"{seed + 1}_duallora_seed{seed}", "duallora", seed,
                       [[0.0, 20.0], [0.5, 20.0], [0.5, 9.0]])
        m = json.loads((run / "metrics.json").read_text())
        m["task_agnostic"] = {"other_mode": "predicted", "retrieval_mean_seen": acc}
        for task, cost in zip(TASKS, ms):
            m["details"][f"after_{TASKS[-1]}"][task]["retrieval_ms_per_sample"] = cost
        (run / "metrics.json").write_text(json.dumps(m))
    s = summarise(load_runs([root])[0]).set_index("strategy")
    assert s.loc["duallora", "retrieval accuracy mean"] == pytest.approx(0.5)
    assert s.loc["duallora", "retrieval ms / sample mean"] == pytest.approx(9.0)
    assert np.isnan(s.loc["seq_ft", "retrieval accuracy mean"])
