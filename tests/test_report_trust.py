"""clbench-report never misleads (issue 39): groups of one config but for the seed, one colour
scale per metric, short titles with a key, the mean predictor beside an MAE, a report.tex that
pdflatex compiles, and every number rounded as the terminal summary rounds it. The run
directories are written as the runner writes them (matrix.csv as ``%.6g``, metrics.json from
:func:`cl_bench.metrics.cl_metrics`, Hydra's ``.hydra/`` record, the CSV logger's losses)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cl_bench.metrics import cl_metrics
from cl_bench.report.cli import write_report
from cl_bench.report.figures import plot_curves, plot_heatmaps, plot_losses
from cl_bench.report.groups import group_keys, summarise
from cl_bench.report.load import load_runs, read_losses
from cl_bench.report.tables import LATEX_COLUMNS
from cl_bench.summary import fmt_value, run_summary

DIGITS = ["digits_0_1", "digits_2_3", "digits_4_5"]
ACCURACY = {"metric": "accuracy", "units": "", "higher_is_better": True}
MAE = {"metric": "mae", "units": "years", "higher_is_better": False}
DICE = {"metric": "dice", "units": "", "higher_is_better": True}


def write_run(root: Path, name: str, R: list[list[float]], tasks: list[str], units: list[dict],
              strategy: str = "lora", seed: int = 0, config: dict | None = None,
              overrides: list[str] | None = None, baselines: dict | None = None,
              per_task_final: dict | None = None, losses: dict | None = None,
              stream: str = "toy") -> Path:
    """A run directory as clbench writes it: ``R`` = [init row, after task 1, ...] (fewer rows
    than tasks + 1: an unfinished run), ``config`` merged into a small ``.hydra/config.yaml``,
    ``baselines`` as metrics.json's, ``per_task_final`` overriding metrics.json's final values
    (a float32 score read back), ``losses`` ``{task: [(step, loss), ...]}`` in the CSV logger's
    ``logs/csv/version_0/metrics.csv``."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    rows = ["init"] + [f"after_{t}" for t in tasks][:len(R) - 1]
    pd.DataFrame(R, index=pd.Index(rows, name="row"), columns=tasks).to_csv(
        run / "matrix.csv", float_format="%.6g")
    metrics = cl_metrics(np.array(R[1:], float), np.array(R[0], float),
                         higher_is_better=[u["higher_is_better"] for u in units],
                         task_names=tasks, metric_names=[u["metric"] for u in units])
    for task, v in (per_task_final or {}).items():
        metrics["per_task"][task]["final"] = v
    metrics.update(units=dict(zip(tasks, units)), strategy=strategy, seed=seed, tasks=stream,
                   backbone="vit", baselines=baselines or {},
                   details={r: {t: {u["metric"]: v} for t, u, v in zip(tasks, units, row)}
                            for r, row in zip(rows, R)})
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "params.json").write_text(json.dumps({"tasks": {t: {
        "trainable": 10, "total": 100, "trainable_pct": 10.0, "adapter": 0} for t in tasks}}))
    (run / "timing.json").write_text(json.dumps({"total_s": 10.0, "peak_rss_mb": 500.0}))
    cfg = {"seed": seed, "results_dir": f"/somewhere/{name}",
           "train": {"max_steps": 20, "progress_bar": False},
           "strategy": {"name": strategy, "lr": 0.001},
           "tasks": {"name": stream, "n_tasks": 3, "cache_dir": "/c"},
           "backbone": {"name": "vit", "decoder": "shared"}}
    for key, value in (config or {}).items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
    if losses:
        log = run / "logs" / "csv" / "version_0"
        log.mkdir(parents=True)
        cols = [f"{t}/task_loss" for t in tasks]
        lines = [",".join(cols + ["epoch", "step"])]
        for t, points in losses.items():
            for step, loss in points:
                lines.append(",".join(str(loss) if c == f"{t}/task_loss" else "" for c in cols)
                             + f",0,{step}")
        (log / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def digits(root: Path, name: str, seed: int = 0, max_tasks: int | None = None, **kw) -> Path:
    """A digits-like run: three 2-class tasks (accuracy), or the first only with
    ``+tasks.max_tasks``; after its first task digits_0_1 scores 0.5375 (float32: 0.53750002)."""
    R = [[0.5, 0.5, 0.5], [0.5375000238418579, 0.5, 0.5], [0.5375, 0.725 + seed / 100, 0.5],
         [0.5375, 0.725 + seed / 100, 0.6]]
    tasks = DIGITS
    config = kw.pop("config", {})
    overrides = ["tasks=digits"]
    if max_tasks:
        R, tasks = [row[:max_tasks] for row in R[:max_tasks + 1]], DIGITS[:max_tasks]
        config = dict(config, **{"tasks.max_tasks": max_tasks})
        overrides.append(f"+tasks.max_tasks={max_tasks}")
    return write_run(root, name, R, tasks, [ACCURACY] * len(tasks), seed=seed, config=config,
                     overrides=overrides, **kw)


def md_table(md: str) -> pd.DataFrame:
    """The markdown table of report.md, its cells as text."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_a_max_tasks_run_and_a_full_run_are_never_one_group(tmp_path):
    root = tmp_path / "sweep"
    digits(root, "full_seed0", seed=0)
    digits(root, "full_seed1", seed=1)
    digits(root, "one_task", seed=0, max_tasks=1)
    runs, _ = load_runs([root])
    assert "cfg:tasks.max_tasks" in group_keys(runs)
    s = summarise(runs)
    assert list(s["n"]) == [2, 1] and list(s["group"]) == ["G1", "G2"]
    assert s["tasks.max_tasks"].isna().iloc[0] and s["tasks.max_tasks"].iloc[1] == 1
    # the one-task run's MFN is its metrics.json's, not "–"
    assert s["final_average accuracy mean"].iloc[1] == pytest.approx(0.5375000238418579)
    assert s["final_average accuracy mean"].iloc[0] == pytest.approx(
        np.mean([(0.5375 + 0.725 + 0.6) / 3, (0.5375 + 0.735 + 0.6) / 3]))
    out = tmp_path / "out"
    _, md, _ = write_report([root], out)
    assert "Separated by: tasks.max_tasks." in md and "–: the key is not set." in md
    table = md_table(md).set_index("group")
    assert table.loc["G2", "final_average accuracy"] == fmt_value(0.5375000238418579) == "0.538"
    assert table.loc["G2", "runs"] == "1" and table.loc["G1", "runs"] == "2"
    assert (table.loc["G1", "tasks.max_tasks"], table.loc["G2", "tasks.max_tasks"]) == ("–", "1")


def test_a_key_set_to_another_value_separates_too_and_paths_do_not(tmp_path):
    """A plain value that differs within a strategy splits it (train.class_weights, which the
    old rule ignored as a path-like "weights" key); where results or the cache live does not;
    a checkpoint counts by its file name."""
    root = tmp_path / "sweep"
    digits(root, "a", config={"train.class_weights": "none", "backbone.weights": "/x/ckpt.pt"})
    digits(root, "b", seed=1, config={"train.class_weights": "none",
                                      "backbone.weights": "/y/ckpt.pt", "tasks.cache_dir": "/d"})
    digits(root, "c", config={"train.class_weights": "median_frequency",
                              "backbone.weights": "/x/ckpt.pt"})
    s = summarise(load_runs([root])[0])
    assert list(s["n"]) == [2, 1] and list(s["train.class_weights"]) == ["none",
                                                                         "median_frequency"]
    assert "backbone.weights" not in s and "tasks.cache_dir" not in s


def three_groups(root: Path) -> None:
    """seq_ft and lora, one seed each, 0.500 in several columns; and four seq_lp groups that
    differ in two long-named keys."""
    write_run(root, "ft", [[0.5, 0.5, 0.5], [0.9, 0.5, 0.5], [0.5, 0.8, 0.5], [0.3, 0.5, 0.7]],
              DIGITS, [ACCURACY] * 3, strategy="seq_ft")
    write_run(root, "lora", [[0.5, 0.5, 0.5], [0.8, 0.5, 0.5], [0.8, 0.7, 0.5],
                             [0.8, 0.7, 0.9]], DIGITS, [ACCURACY] * 3, strategy="lora")
    for i, (decoder, stages) in enumerate([("shared", "[5]"), ("unetr_with_skips", "[4]"),
                                           ("linear_probe_head", "[0, 1]"),
                                           ("unetr_with_skips", "[0, 1]")]):
        write_run(root, f"lp{i}", [[0.5, 0.5, 0.5], [0.7, 0.5, 0.5], [0.7, 0.6, 0.5],
                                   [0.7, 0.6, 0.55 + i / 100]], DIGITS, [ACCURACY] * 3,
                  strategy="seq_lp", config={"backbone.decoder": decoder,
                                             "backbone.regression_stages": stages})


def test_heatmaps_one_colour_scale_per_metric_with_a_colour_bar(tmp_path):
    three_groups(tmp_path / "sweep")
    runs, _ = load_runs([tmp_path / "sweep"])
    drawn = plot_heatmaps(runs, group_keys(runs), tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 10_000
    assert drawn["colorbars"] == ["accuracy ↑"] and len(drawn["scales"]) == 1
    # 0.500 in every column of every panel: one colour; a better value: another
    half = {colour for (g, row, task), (text, colour) in drawn["cells"].items() if text == "0.500"}
    assert len(half) == 1
    columns = {task for (g, row, task), (text, _) in drawn["cells"].items() if text == "0.500"}
    assert columns == set(DIGITS)
    assert drawn["cells"][("G1", "after_digits_0_1", "digits_0_1")][1] not in half
    # 0.800 in two panels and two columns: one colour
    assert (drawn["cells"][("G1", "after_digits_2_3", "digits_2_3")]
            == drawn["cells"][("G2", "after_digits_0_1", "digits_0_1")])


def test_titles_are_short_and_the_key_names_every_group(tmp_path):
    three_groups(tmp_path / "sweep")
    runs, _ = load_runs([tmp_path / "sweep"])
    drawn = plot_heatmaps(runs, group_keys(runs), tmp_path / "h.png")
    titles = drawn["titles"]
    assert [t.split()[0] for t in titles] == [f"G{i}" for i in range(1, 7)]
    assert all(len(t) <= 40 and " / " not in t for t in titles), titles
    assert titles[0] == "G1 seq_ft · decoder=shared (n=1)"  # no regression_stages: unset
    assert titles[4] == "G5 seq_lp … (n=1)"  # too long for its panel: the key says it
    key = " ".join(drawn["key"])
    for i, (decoder, stages) in enumerate([("shared", "[5]"), ("unetr_with_skips", "[4]"),
                                           ("linear_probe_head", "[0, 1]"),
                                           ("unetr_with_skips", "[0, 1]")]):
        assert f"G{i + 3}: seq_lp · decoder={decoder} · regression_stages={stages} (1 run)" in key
    assert "all groups: tasks toy, backbone vit" in key and "n: runs (seeds) averaged" in key


def test_curves_legend_names_each_group_once(tmp_path):
    three_groups(tmp_path / "sweep")
    runs, _ = load_runs([tmp_path / "sweep"])
    labels = plot_curves(runs, group_keys(runs), tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert len(labels) == len(set(labels)) == 6
    assert [label.split()[0] for label in labels] == [f"G{i}" for i in range(1, 7)]
    assert sum(label.split()[1] == "seq_lp" for label in labels) == 4


def brain(root: Path, name: str, strategy: str, mae: float, baselines: dict | None,
          seed: int = 0, old_format: bool = False) -> Path:
    """A brain-like run: tumour_seg (Dice), then brain_age (MAE in years); its mean predictor
    in metrics.json's ``baselines`` or (``old_format``) only in ``details``."""
    run = write_run(root, name, [[0.0, 20.0], [0.8, 20.0], [0.7, mae]],
                    ["tumour_seg", "brain_age"], [DICE, MAE], strategy=strategy, seed=seed,
                    baselines=None if old_format else baselines, stream="brain_toy")
    if old_format:
        m = json.loads((run / "metrics.json").read_text())
        for row in m["details"].values():
            row["brain_age"]["mae_mean_predictor"] = baselines["brain_age"]["mean_predictor"]
        (run / "metrics.json").write_text(json.dumps(m))
    return run


def test_regression_rows_name_the_mean_predictor(tmp_path):
    root = tmp_path / "sweep"
    mean = {"brain_age": {"mean_predictor": 16.3}}
    brain(root, "ft", "seq_ft", 18.9, mean)
    brain(root, "lora0", "lora", 9.5, mean)
    brain(root, "lora1", "lora", 10.5, mean, seed=1, old_format=True)  # details only
    out = tmp_path / "out"
    summary, md, _ = write_report([root], out)
    table = md_table(md).set_index("group")
    assert table.loc["G1", "brain_age mae (years), predicting the mean"] == "16.3"
    assert table.loc["G2", "brain_age mae (years), predicting the mean"] == "16.3 ± 0.0"
    assert table.loc["G1", "brain_age mae (years) ↓"] == "18.9"
    assert ("G1 seq_ft: brain_age MAE 18.9 years, worse than predicting the mean (16.3 years)"
            in md)
    assert "G2 lora: brain_age MAE 10.0 years, better than predicting the mean (16.3 years)" in md
    # the heatmap: the mean predictor as a row, and a cell worse than it says so
    runs, _ = load_runs([root])
    drawn = plot_heatmaps(runs, group_keys(runs), tmp_path / "h.png")
    cells = drawn["cells"]
    assert cells[("G1", "predicting the mean", "brain_age")][0] == "16.3"
    assert cells[("G1", "after_brain_age", "brain_age")][0] == "18.9\nworse than the mean"
    assert cells[("G2", "after_brain_age", "brain_age")][0] == "10.0"
    # MAE: 0 (perfect) to the mean predictor (the worst colour), one scale in both panels
    scale = drawn["scales"][("mae", "years", False)]
    assert (scale["vmin"], scale["vmax"], scale["extend"]) == (0.0, 16.3, "max")
    assert sorted(drawn["colorbars"]) == ["Dice ↑", "MAE (years) ↓"]


def test_report_tex_is_ascii_and_no_table_has_more_than_10_columns(tmp_path):
    root = tmp_path / "sweep"
    three_groups(root)
    brain(root, "brain", "seq_ft", 18.9, {"brain_age": {"mean_predictor": 16.3}})
    out = tmp_path / "out"
    _, _, _ = write_report([root], out, paper="brain_mri_fm")
    tex = (out / "report.tex").read_text()
    tex.encode("ascii")  # raises on any non-ASCII character
    assert r"$\uparrow$" in tex and r"$\pm$" in tex and "--" in tex
    assert "digits\\_0\\_1" in tex and "_0_1" not in tex.replace("\\_", "")
    specs = re.findall(r"\\begin\{tabular\}\{([lr]+)\}", tex)
    assert len(specs) >= 3 and max(map(len, specs)) <= LATEX_COLUMNS == 10
    for line in tex.splitlines():
        if line.endswith(r"\\") and "&" in line:
            assert line.count(" & ") <= LATEX_COLUMNS - 1, line
    assert tex.startswith(r"\documentclass{article}") and tex.rstrip().endswith(r"\end{document}")


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (apt-get install texlive-latex-base)")
def test_report_tex_compiles_with_pdflatex(tmp_path):
    root = tmp_path / "sweep"
    three_groups(root)
    brain(root, "brain", "seq_ft", 18.9, {"brain_age": {"mean_predictor": 16.3}})
    out = tmp_path / "out"
    write_report([root], out, paper="brain_mri_fm")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                           "report.tex"], cwd=out, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (out / "report.pdf").stat().st_size > 1000
    assert "Overfull \\hbox" not in (out / "report.log").read_text()  # every table fits


def test_every_number_is_rounded_as_the_terminal_summary(tmp_path):
    """0.9625 as matrix.csv holds it and 0.96249998 as metrics.json holds the float32 score:
    one text everywhere, the terminal summary's."""
    root = tmp_path / "sweep"
    run = write_run(root, "r", [[0.5, 0.5], [0.9625, 0.5], [0.9625, 0.75]],
                    DIGITS[:2], [ACCURACY] * 2, per_task_final={"digits_0_1": 0.9624999761581421})
    shown = fmt_value(0.9625)
    assert fmt_value(0.9624999761581421) == shown  # the rule itself (cl_bench.summary)
    assert f" {shown} " in run_summary(run)  # the terminal's R
    out = tmp_path / "out"
    _, md, _ = write_report([root], out)
    table = md_table(md)
    assert table["digits_0_1 accuracy ↑"].iloc[0] == shown
    assert table["digits_2_3 accuracy ↑"].iloc[0] == "0.750"  # not re-parsed into 0.75
    assert f" & {shown} " in (out / "report.tex").read_text()
    runs, _ = load_runs([root])
    drawn = plot_heatmaps(runs, group_keys(runs), tmp_path / "h.png")
    assert drawn["cells"][("G1", "after_digits_2_3", "digits_0_1")][0] == shown


def test_losses_png_from_the_csv_logger(tmp_path):
    root = tmp_path / "sweep"
    losses = {"digits_0_1": [(9, 0.7), (19, 0.5)], "digits_2_3": [(9, 0.9), (19, 0.4)]}
    for seed in (0, 1):
        digits(root, f"r{seed}", seed=seed, losses=losses)
    run = root / "r1"
    resumed = run / "logs" / "csv" / "version_1"  # a resumed run's later version wins
    resumed.mkdir(parents=True)
    (resumed / "metrics.csv").write_text("digits_0_1/task_loss,epoch,step\n0.3,0,19\n")
    got = read_losses(run)
    assert got[got["task"] == "digits_0_1"][["step", "loss"]].values.tolist() == [[9, 0.7],
                                                                                   [19, 0.3]]
    runs, _ = load_runs([root])
    labels = plot_losses(runs, group_keys(runs), tmp_path / "l.png")
    assert labels == ["G1"] and (tmp_path / "l.png").stat().st_size > 10_000
    out = tmp_path / "out"
    _, md, _ = write_report([root], out)
    assert (out / "losses.png").is_file() and "Figures: heatmaps.png, curves.png, losses.png." in md
    # no run logged a loss (logger=none): no losses.png, and the report says why
    _, md, _ = write_report([_no_logs(tmp_path)], tmp_path / "none")
    assert not (tmp_path / "none" / "losses.png").exists()
    assert "no losses.png: no run logged its loss" in md


def _no_logs(tmp_path: Path) -> Path:
    root = tmp_path / "no_logs"
    digits(root, "r0")
    return root
