"""Numbers beside their baselines (issue 39): a regression task's mean predictor and a
classification task's chance in metrics.json, the row lines, the summary and the heatmap; and
one rounding rule (cl_bench.summary.fmt_value) on every path that shows a value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cl_bench import results
from cl_bench.data.base import Task
from cl_bench.kinds import task_baselines
from cl_bench.progress import row_line
from cl_bench.results import write_results
from cl_bench.summary import fmt_value, job_line, run_summary, versus_baseline


def _stream(scenario: str = "task_il") -> list[Task]:
    return [Task("tumour_seg", "segmentation", [], [], num_classes=4),
            Task("brain_age", "regression", [], [], target_mean=50.0, target_std=10.0,
                 units="years"),
            Task("digits_a", "classification", [], [], num_classes=2, classes=[0, 1],
                 scenario=scenario),
            Task("digits_b", "classification", [], [], num_classes=2, classes=[2, 3],
                 scenario=scenario)]


def _rows_details(mae_after: float, acc: float):
    """Rows of R and their details as the runner has them: a worse-than-guessing age head."""
    rows = {"init": [0.01, 20.0, 0.5, 0.5],
            "after_tumour_seg": [0.6, 20.0, 0.5, 0.5],
            "after_brain_age": [0.6, mae_after, acc, 0.5]}
    details = {label: {"tumour_seg": {"dice": r[0]},
                       "brain_age": {"mae": r[1], "mae_normalised": r[1] / 10,
                                     "mae_mean_predictor": 16.3},
                       "digits_a": {"accuracy": r[2]}, "digits_b": {"accuracy": r[3]}}
               for label, r in rows.items()}
    return rows, details


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures plot_heatmap drew, kept open for inspection."""
    drawn = []
    monkeypatch.setattr(results.plt, "close", drawn.append)
    return drawn


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_metrics_json_names_each_tasks_baseline(tmp_path):
    rows, details = _rows_details(18.9, 0.9)
    metrics = write_results(tmp_path, _stream(), rows, details, {"strategy": "lora"},
                            figures=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["baselines"] == metrics["baselines"] == {
        "brain_age": {"mean_predictor": 16.3},
        "digits_a": {"chance": 0.5, "classes": 2},
        "digits_b": {"chance": 0.5, "classes": 2}}  # no baseline for Dice


def test_class_il_chance_is_over_every_class_of_the_stream():
    stream = _stream("class_il")
    found = task_baselines(stream, {"init": {}})
    assert found["digits_a"] == {"chance": 0.25, "classes": 4}
    assert "brain_age" not in found  # no mean predictor measured: nothing made up


def test_the_row_line_names_the_mean_predictor():
    stream = _stream()
    rows, details = _rows_details(18.9, 0.9)
    line = row_line("after_brain_age", stream, rows["after_brain_age"], 4.12,
                    details["after_brain_age"], width=200)
    assert line == ("row after_brain_age: tumour_seg Dice 0.600, brain_age MAE 18.9 years "
                    "(predicting the mean: 16.3), digits_a accuracy 0.900, digits_b accuracy "
                    "0.500 (4.1 s)")
    # a narrow terminal: broken between tasks, never inside one
    narrow = row_line("after_brain_age", stream, rows["after_brain_age"], 4.12,
                      details["after_brain_age"], width=60)
    assert all(len(ln) <= 60 for ln in narrow.splitlines())
    assert "    brain_age MAE 18.9 years (predicting the mean: 16.3)," in narrow.splitlines()
    assert " ".join(narrow.split()) == " ".join(line.split())


def test_the_summary_says_plainly_when_the_model_is_worse_than_guessing(tmp_path):
    rows, details = _rows_details(18.9, 0.5)
    write_results(tmp_path, _stream(), rows, details, {"strategy": "lora", "seed": 0},
                  figures=False)
    text = run_summary(tmp_path, width=100)
    assert ("brain_age: MAE 18.9 years (after_brain_age) is worse than predicting the mean "
            "(16.3 years)") in text
    assert "digits_a: accuracy 0.500 (after_brain_age) is no better than chance (0.500, 2 " \
           "classes)" in text
    # the baseline row of R, under the column of each task that has one
    (base,) = [ln for ln in text.splitlines() if ln.startswith("baseline ")]
    assert base.split() == ["baseline", "–", "16.3", "0.500", "0.500"]
    assert all(len(ln) <= 100 for ln in text.splitlines() if "--" not in ln)


def test_a_model_better_than_its_baseline_is_said_to_be():
    assert versus_baseline(12.0, {"mean_predictor": 16.3}, False) == \
        "better than predicting the mean"
    assert versus_baseline(0.9, {"chance": 0.5}, True) == "better than chance"
    assert versus_baseline(0.50004, {"chance": 0.5}, True) == "no better than chance"
    assert versus_baseline(0.9, {}, True) is None


def test_the_heatmap_annotates_baselines_and_scales_mae_up_to_the_mean(tmp_path, figures):
    rows, details = _rows_details(18.9, 0.5)
    write_results(tmp_path, _stream(), rows, details, {"strategy": "lora", "seed": 0})
    assert (tmp_path / "heatmap.png").stat().st_size > 0
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes]
    assert any("predicting the mean: 16.3" in t for t in titles), titles
    assert any("chance: 0.500" in t for t in titles), titles
    texts = _texts(fig)
    assert "18.9\nworse than the mean" in texts and "20.0\nworse than the mean" in texts
    assert "0.500\nno better than chance" in texts
    (mae_panel,) = [ax for ax in fig.axes if ax.get_title().startswith("mae")]
    assert mae_panel.images[0].get_clim() == (0.0, 16.3)  # 0 = perfect, the mean = worst


@pytest.mark.parametrize("value", [0.9625, np.float32(0.9625), float(np.float32(0.9625)),
                                   "0.9625", 0.96250000000000002])
def test_one_rounding_rule_half_away_from_zero_on_six_significant_digits(value):
    assert fmt_value(value) == "0.963"


def test_rounding_edges():
    assert [fmt_value(v) for v in (16.25, -16.25, 0.0005, -0.0004, 9.99996, 1234.56, None,
                                   float("nan"), float("inf"))] == \
        ["16.3", "-16.3", "0.001", "0.000", "10.0", "1234.6", "–", "nan", "inf"]


def test_0_9625_reads_the_same_on_every_path(tmp_path, figures):
    """The row line (the float32 in memory), the summary and the sweep line (matrix.csv), the
    heatmap (memory) and the metrics of metrics.json all show 0.963."""
    acc = float(np.float32(0.9625))  # what torchmetrics' accuracy gives: 0.96249998...
    stream = _stream()[2:]
    rows = {"init": [0.5, 0.5], "after_digits_a": [acc, 0.5], "after_digits_b": [acc, acc]}
    details = {label: {"digits_a": {"accuracy": r[0]}, "digits_b": {"accuracy": r[1]}}
               for label, r in rows.items()}
    write_results(tmp_path, stream, rows, details, {"strategy": "lora", "seed": 0,
                                                    "complete": True})
    assert "digits_a accuracy 0.963, digits_b accuracy 0.963 (" in row_line(
        "after_digits_b", stream, rows["after_digits_b"], 1.0, details["after_digits_b"])
    text = run_summary(tmp_path, width=200)
    (last,) = [ln for ln in text.splitlines() if ln.startswith("after_digits_b ")]
    assert last.split()[1:] == ["0.963", "0.963"]
    assert job_line(tmp_path).startswith("lora seed 0: digits_a accuracy 0.963, digits_b "
                                         "accuracy 0.963 -> ")
    (group,) = [ln for ln in text.splitlines() if ln.startswith("accuracy ↑")]
    assert group.split()[2:4] == ["0.963", "0.963"]  # MFN, MFT from metrics.json
    (fig,) = figures
    assert _texts(fig).count("0.963") == 3 and "0.962" not in _texts(fig)
