"""cl_bench.metrics on hand-built matrices with hand-computed expected values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cl_bench.metrics import (bwt_gem, bwt_sefe, cl_metrics, final_average, forgetting_last,
                              forgetting_max, fwt, maa, mft)

# 3 tasks, higher is better. Rows = after task 1, 2, 3; columns = tasks 1, 2, 3.
R3 = np.array([[0.80, 0.30, 0.20],
               [0.85, 0.90, 0.40],
               [0.50, 0.70, 0.95]])
INIT3 = np.array([0.10, 0.20, 0.25])


def _walk_types(x):
    """Every leaf is a plain JSON type."""
    if isinstance(x, dict):
        for k, v in x.items():
            assert type(k) is str
            _walk_types(v)
    elif isinstance(x, list):
        for v in x:
            _walk_types(v)
    else:
        assert x is None or type(x) in (bool, int, float, str), (x, type(x))


# ---------------------------------------------------------------------------- pure functions

def test_pure_functions_3x3():
    # final: (0.5 + 0.7 + 0.95) / 3
    assert final_average(R3) == pytest.approx(2.15 / 3)
    # just learned: (0.8 + 0.9 + 0.95) / 3
    assert mft(R3) == pytest.approx(2.65 / 3)
    # rows: 0.8 ; (0.85 + 0.9)/2 = 0.875 ; 2.15/3
    assert maa(R3) == pytest.approx((0.8 + 0.875 + 2.15 / 3) / 3)
    # ((0.5-0.8) + (0.7-0.9)) / 2
    assert bwt_gem(R3) == pytest.approx(-0.25)
    # ((0.5-0.8) + (0.7-0.9) + 0) / 3 = MFN - MFT
    assert bwt_sefe(R3) == pytest.approx(-0.5 / 3)
    assert bwt_sefe(R3) == pytest.approx(final_average(R3) - mft(R3))
    # ((0.3-0.2) + (0.4-0.25)) / 2
    assert fwt(R3, INIT3) == pytest.approx(0.125)
    assert fwt(R3, None) is None
    # task 1: max(0.8, 0.85) - 0.5 = 0.35 ; task 2: 0.9 - 0.7 = 0.2
    assert forgetting_max(R3) == pytest.approx(0.275)
    # task 1: 0.8 - 0.5 = 0.3 ; task 2: 0.9 - 0.7 = 0.2
    assert forgetting_last(R3) == pytest.approx(0.25)
    for f in (final_average, mft, maa, bwt_gem, bwt_sefe, forgetting_max, forgetting_last):
        assert type(f(R3)) is float


def test_pure_functions_single_task():
    R = np.array([[0.7]])
    assert final_average(R) == pytest.approx(0.7)
    assert mft(R) == pytest.approx(0.7)
    assert maa(R) == pytest.approx(0.7)
    assert bwt_gem(R) == 0.0
    assert bwt_sefe(R) == 0.0
    assert fwt(R, [0.1]) is None
    assert forgetting_max(R) == 0.0
    assert forgetting_last(R) == 0.0


def test_sefe_bwt_is_mfn_minus_mft():
    # T = 2: MFT = (78.04 + 60) / 2 = 69.02, MFN = (57.14 + 60) / 2 = 58.57
    R = np.array([[78.04, 10.0],
                  [57.14, 60.0]])
    assert mft(R) == pytest.approx(69.02)
    assert final_average(R) == pytest.approx(58.57)
    assert bwt_sefe(R) == pytest.approx(-10.45)
    assert bwt_gem(R) == pytest.approx(-20.9)


def test_zero_bwt_for_constant_columns_after_learning():
    R = np.array([[0.5, 0.1, 0.2],
                  [0.5, 0.7, 0.3],
                  [0.5, 0.7, 0.9]])
    assert bwt_gem(R) == 0.0
    assert bwt_sefe(R) == 0.0
    assert forgetting_max(R) == 0.0
    assert forgetting_last(R) == 0.0
    out = cl_metrics(R)
    assert out["stream"]["bwt_gem"] == 0.0
    assert out["stream"]["bwt_sefe"] == 0.0
    assert all(t["bwt"] == 0.0 for t in out["per_task"].values())


def test_pure_functions_with_cols_and_per_column_signs():
    s = np.array([1, -1, 1])
    # column 1 flipped: gain = -(0.7 - 0.9) = +0.2
    assert bwt_gem(R3, s) == pytest.approx((-0.3 + 0.2) / 2)
    assert bwt_gem(R3, 1, cols=[0]) == pytest.approx(-0.3)
    assert final_average(R3, cols=[0, 2]) == pytest.approx((0.5 + 0.95) / 2)
    # fwt over column 2 only: 0.4 - 0.25
    assert fwt(R3, INIT3, 1, cols=[2]) == pytest.approx(0.15)
    assert fwt(R3, INIT3, 1, cols=[0]) is None


# ---------------------------------------------------------------------------- cl_metrics

def test_cl_metrics_3x3_dict():
    out = cl_metrics(R3, INIT3, task_names=["a", "b", "c"])
    json.dumps(out, allow_nan=False)
    _walk_types(out)
    assert out["complete"] is True
    assert out["tasks_completed"] == 3
    assert out["num_tasks"] == 3
    assert set(out["conventions"]) >= {"final_average", "mft", "maa", "bwt_gem", "bwt_sefe",
                                       "fwt", "forgetting_max", "forgetting_last", "sign"}
    assert "1706.08840" in out["conventions"]["bwt_gem"]
    assert "1801.10112" in out["conventions"]["forgetting_max"]
    assert "2505.02486" in out["conventions"]["bwt_sefe"]

    a, b, c = (out["per_task"][n] for n in "abc")
    assert a == pytest.approx({"metric": "metric", "higher_is_better": True, "final": 0.5,
                               "just_learned": 0.8, "bwt": -0.3, "forgetting_max": 0.35,
                               "forgetting_last": 0.3, "fwt": None, "init": 0.1})
    assert b["bwt"] == pytest.approx(-0.2)
    assert b["forgetting_max"] == pytest.approx(0.2)
    assert b["fwt"] == pytest.approx(0.1)
    assert c["bwt"] == 0.0
    assert c["forgetting_max"] == 0.0 and c["forgetting_last"] == 0.0
    assert c["fwt"] == pytest.approx(0.15)
    assert c["init"] == pytest.approx(0.25)

    g = out["groups"]["metric"]
    assert g["tasks"] == ["a", "b", "c"]
    assert g["higher_is_better"] is True
    assert g["final_average"] == pytest.approx(2.15 / 3)
    assert g["mft"] == pytest.approx(2.65 / 3)
    assert g["maa"] == pytest.approx((0.8 + 0.875 + 2.15 / 3) / 3)
    assert g["bwt_gem"] == pytest.approx(-0.25)
    assert g["bwt_sefe"] == pytest.approx(-0.5 / 3)
    assert g["fwt"] == pytest.approx(0.125)
    assert g["forgetting_max"] == pytest.approx(0.275)
    assert g["forgetting_last"] == pytest.approx(0.25)
    assert out["stream"] == g


def test_default_names_and_no_init():
    out = cl_metrics(R3.tolist())
    assert list(out["per_task"]) == ["task0", "task1", "task2"]
    assert out["stream"]["fwt"] is None
    assert out["per_task"]["task2"]["init"] is None


def test_mae_lower_is_better():
    # brain-age MAE in years: task 1 error goes 3.0 -> 5.0 after training task 2
    R = np.array([[3.0, 8.0],
                  [5.0, 4.0]])
    init = np.array([10.0, 9.0])
    out = cl_metrics(R, init, higher_is_better=False, task_names=["age1", "age2"],
                     metric_names=["mae", "mae"])
    t1 = out["per_task"]["age1"]
    assert t1["bwt"] == pytest.approx(-2.0)
    assert t1["forgetting_max"] == pytest.approx(2.0)
    assert t1["forgetting_last"] == pytest.approx(2.0)
    # MAE on task 2 went 9.0 (init) -> 8.0 before training it: an improvement of 1 year
    assert out["per_task"]["age2"]["fwt"] == pytest.approx(1.0)
    s = out["stream"]
    assert s["higher_is_better"] is False
    assert s["bwt_gem"] == pytest.approx(-2.0)
    assert s["bwt_sefe"] == pytest.approx(-1.0)
    assert s["forgetting_max"] == pytest.approx(2.0)
    assert s["forgetting_last"] == pytest.approx(2.0)
    assert s["fwt"] == pytest.approx(1.0)
    # raw averages, no sign flip
    assert s["final_average"] == pytest.approx(4.5)
    assert s["mft"] == pytest.approx(3.5)
    assert s["maa"] == pytest.approx((3.0 + 4.5) / 2)
    assert bwt_gem(R, -1) == pytest.approx(-2.0)
    assert forgetting_max(R, -1) == pytest.approx(2.0)


def test_mixed_dice_mae_stream_groups_per_metric():
    # stream: seg0 (dice), age0 (mae), seg1 (dice), age1 (mae)
    R = np.array([[0.80, 7.0, 0.30, 9.0],
                  [0.82, 4.0, 0.35, 6.0],
                  [0.75, 4.5, 0.85, 5.5],
                  [0.72, 5.0, 0.80, 3.5]])
    init = np.array([0.10, 10.0, 0.20, 11.0])
    out = cl_metrics(R, init, higher_is_better=[True, False, True, False],
                     task_names=["seg0", "age0", "seg1", "age1"],
                     metric_names=["dice", "mae", "dice", "mae"])
    json.dumps(out, allow_nan=False)
    _walk_types(out)
    assert out["stream"] is None
    assert list(out["groups"]) == ["dice", "mae"]

    d = out["groups"]["dice"]
    assert d["tasks"] == ["seg0", "seg1"]
    assert d["higher_is_better"] is True
    assert d["final_average"] == pytest.approx(0.76)          # (0.72 + 0.80) / 2
    assert d["mft"] == pytest.approx(0.825)                   # (R11 + R33) = (0.80 + 0.85) / 2
    assert d["maa"] == pytest.approx((0.80 + 0.82 + 0.80 + 0.76) / 4)
    assert d["bwt_gem"] == pytest.approx((-0.08 - 0.05) / 2)  # seg1 precedes the last task
    assert d["bwt_sefe"] == pytest.approx((-0.08 - 0.05) / 2)
    assert d["fwt"] == pytest.approx(0.35 - 0.20)              # after age0, on seg1, vs init
    assert d["forgetting_max"] == pytest.approx((0.10 + 0.05) / 2)  # max(0.80,0.82,0.75) - 0.72
    assert d["forgetting_last"] == pytest.approx((0.08 + 0.05) / 2)

    m = out["groups"]["mae"]
    assert m["tasks"] == ["age0", "age1"]
    assert m["higher_is_better"] is False
    assert m["final_average"] == pytest.approx(4.25)          # (5.0 + 3.5) / 2
    assert m["mft"] == pytest.approx(3.75)                    # (4.0 + 3.5) / 2
    assert m["maa"] == pytest.approx((4.0 + 4.5 + 4.25) / 3)  # row 1 skipped: no MAE task seen
    assert m["bwt_gem"] == pytest.approx(-1.0)                # -(5.0 - 4.0), age1 is last
    assert m["bwt_sefe"] == pytest.approx(-0.5)
    assert m["fwt"] == pytest.approx((3.0 + 5.5) / 2)         # -(7-10), -(5.5-11)
    assert m["forgetting_max"] == pytest.approx(1.0)          # max(-4.0, -4.5) + 5.0
    assert m["forgetting_last"] == pytest.approx(1.0)
    assert out["per_task"]["age0"]["bwt"] == pytest.approx(-1.0)
    assert out["per_task"]["seg1"]["bwt"] == pytest.approx(-0.05)


def test_partial_run_truncates_stream():
    R = np.array([[0.8, 0.3, np.nan],
                  [0.6, 0.9, np.nan]])   # unseen task 3 is never read
    out = cl_metrics(R, [0.1, 0.2, 0.3], task_names=["a", "b", "c"])
    json.dumps(out, allow_nan=False)
    assert out["complete"] is False
    assert out["tasks_completed"] == 2
    assert out["num_tasks"] == 3
    assert list(out["per_task"]) == ["a", "b"]
    s = out["stream"]
    assert s["tasks"] == ["a", "b"]
    assert s["final_average"] == pytest.approx(0.75)
    assert s["mft"] == pytest.approx(0.85)
    assert s["maa"] == pytest.approx((0.8 + 0.75) / 2)
    assert s["bwt_gem"] == pytest.approx(-0.2)
    assert s["bwt_sefe"] == pytest.approx(-0.1)
    assert s["fwt"] == pytest.approx(0.1)
    assert s["forgetting_max"] == pytest.approx(0.2)
    assert out["per_task"]["b"]["forgetting_last"] == 0.0


def test_partial_single_row():
    out = cl_metrics([[0.8, 0.1]], [0.0, 0.0])
    assert out["complete"] is False and out["tasks_completed"] == 1
    assert out["stream"]["bwt_gem"] == 0.0
    assert out["stream"]["fwt"] is None


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("R, match", [
    ([0.1, 0.2], "2-D"),
    (np.zeros((2, 2, 2)), "2-D"),
    (np.zeros((3, 2)), "3 rows but only 2"),
    (np.zeros((0, 2)), "at least one"),
])
def test_bad_shape(R, match):
    with pytest.raises(ValueError, match=match):
        cl_metrics(R)


def test_bad_init_length():
    with pytest.raises(ValueError, match=r"init: expected shape \(3,\)"):
        cl_metrics(R3, [0.1, 0.2])
    with pytest.raises(ValueError, match="init"):
        fwt(R3, [0.1, 0.2])


def test_nan_init_needed():
    with pytest.raises(ValueError, match=r"init\[2\]"):
        cl_metrics(R3, [0.1, 0.2, np.nan])


@pytest.mark.parametrize("kwargs, match", [
    ({"task_names": ["a", "b"]}, "task_names: expected 3"),
    ({"task_names": ["a", "a", "b"]}, "distinct"),
    ({"metric_names": ["dice"]}, "metric_names: expected 3"),
    ({"higher_is_better": [True, False]}, "higher_is_better: expected 3"),
    ({"metric_names": ["dice"] * 3, "higher_is_better": [True, False, True]}, "disagree"),
])
def test_bad_names_and_directions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl_metrics(R3, **kwargs)


def test_nan_in_needed_cell_names_the_cell():
    R = R3.copy()
    R[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"R\[1\]\[0\].*after task 'b', on task 'a'"):
        cl_metrics(R, task_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"R\[1\]\[0\]"):
        bwt_gem(R)


def test_pure_functions_reject_non_square_and_bad_signs():
    with pytest.raises(ValueError, match="square"):
        bwt_gem(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        mft([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\+1"):
        bwt_gem(R3, 2)
    with pytest.raises(ValueError, match="per-column"):
        bwt_gem(R3, [1, -1])
