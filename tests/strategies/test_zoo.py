"""Every strategy end to end on the digits stream, each checked for its defining property.

One table row per strategy: the overrides of its run and the property that makes it that
method (issue 5). Runs are shared within the module (a strategy's run is made once).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.runner import run

CONF = str(Path(__file__).resolve().parents[2] / "conf")
BASE = ["tasks=digits", "tasks.n_tasks=2", "train.max_steps=60", "train.batch_size=32",
        "train.progress_bar=false", "train.checkpoint_every_n_epochs=0", "logger=none",
        "hardware.num_threads=1"]  # tiny models: a second thread only adds overhead
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """``digits_run(key, *overrides)``: the 2-task digits stream run once per ``key`` in this
    module (joint's check reuses seq_ft's class-IL run): (RunOutput, R DataFrame, metrics, dir)."""
    runs: dict[str, tuple] = {}

    def _run(key: str, *overrides: str) -> tuple:
        if key not in runs:
            with initialize_config_dir(config_dir=CONF, version_base="1.3"):
                cfg = compose("config", overrides=BASE + list(overrides))
            out_dir = tmp_path_factory.mktemp(key)
            out = run(cfg, out_dir)
            R = pd.read_csv(out_dir / "matrix.csv", index_col=0)
            metrics = json.loads((out_dir / "metrics.json").read_text())
            runs[key] = (out, R, metrics, out_dir)
        return runs[key]

    return _run


def exactly_no_forgetting(out, R, metrics, run_dir):
    """Old tasks' modules never change: R[T][j] == R[j][j] bit for bit, BWT exactly 0."""
    trained = R.drop(index="init").to_numpy()
    assert np.array_equal(trained[-1, :-1], np.diag(trained)[:-1])
    assert metrics["groups"]["accuracy"]["bwt_gem"] == 0.0


def check_seq_ft(out, R, metrics, run_dir):
    assert metrics["complete"] and np.isfinite(R.to_numpy()).all()
    assert R.loc["after_digits_0_1", "digits_0_1"] > 0.8  # learns the task


def check_seq_lp(out, R, metrics, run_dir):
    exactly_no_forgetting(out, R, metrics, run_dir)  # frozen backbone + private heads


def check_lora(out, R, metrics, run_dir):
    exactly_no_forgetting(out, R, metrics, run_dir)


def check_proteus(out, R, metrics, run_dir):
    exactly_no_forgetting(out, R, metrics, run_dir)  # oracle task ids (eval.task_id=oracle)
    retrieval = pd.read_csv(run_dir / "task_agnostic" / "retrieval.csv", index_col=0)
    assert (retrieval.iloc[-1] >= 0.95).all(), retrieval
    assert (run_dir / "task_agnostic" / "matrix_predicted.csv").is_file()


def check_inflora(out, R, metrics, run_dir):
    assert out.strategy.orthogonality_residual(1) < 1e-4


def check_duallora(out, R, metrics, run_dir):
    assert out.strategy.orthogonality_residual(1) < 1e-4
    retrieval = pd.read_csv(run_dir / "task_agnostic" / "retrieval.csv", index_col=0)
    assert retrieval.iloc[-1].mean() > 0.5  # better than chance between 2 tasks


def check_olora(out, R, metrics, run_dir):
    from cl_bench.strategies.olora import orthogonality_loss

    q, _ = torch.linalg.qr(torch.randn(16, 16))
    old, new = q[:4], q[4:8]  # rows of one orthonormal basis
    assert float(orthogonality_loss([old], new)) == pytest.approx(0.0, abs=1e-5)
    assert float(orthogonality_loss([old], new + 0.1 * old)) > 0.1


def check_reglora(out, R, metrics, run_dir):
    s = out.strategy
    assert s.masks, "no masks after the stream"
    for name, mask in s.masks.items():  # the union of 2 tasks' top-2 % masks
        per_task = math.ceil(0.02 * mask.numel())
        assert per_task <= int(mask.sum()) <= 2 * per_task, name
    # zero on the mask: zero the current LoRA's B (dW = B A = 0) and the regulariser vanishes
    with torch.no_grad():
        for n, p in out.model.named_parameters():
            if "lora_B" in n:
                p.zero_()
    assert float(s.regularizer()) == 0.0


def check_ewc(out, R, metrics, run_dir):
    s = out.strategy
    assert len(s.terms) == 2  # offline EWC: one (Fisher, anchor) per task
    s.terms = s.terms[-1:]  # the last anchor is the current weights
    assert float(s.penalty()) == 0.0  # at the anchor
    p = next(iter(s.shared_parameters().values()))
    with torch.no_grad():
        p.add_(0.05)
        moved = float(s.penalty())
        p.add_(0.05)
        further = float(s.penalty())
    assert 0 < moved < further


def check_lwf(out, R, metrics, run_dir):
    from cl_bench.strategies.lwf import distillation

    old = torch.randn(8, 3)
    new = old.clone().requires_grad_(True)
    distillation(new, old, "classification").backward()
    assert new.grad.abs().max() < 1e-6  # no pull when the outputs agree
    new2 = (old + torch.randn(8, 3)).requires_grad_(True)
    distillation(new2, old, "classification").backward()
    assert new2.grad.abs().max() > 1e-3


def check_er(out, R, metrics, run_dir):
    s = out.strategy
    n_train = sum(len(t.train) for t in s.stream)
    assert s.buffer_size < n_train and len(s.buffer) == s.buffer_size
    assert len(set(s.buffer)) == len(s.buffer)
    assert {j for j, _ in s.buffer} == {0, 1}  # both tasks represented
    assert s.memory_bytes() == s.buffer_size * (8 * 8 * 4 + 8)
    assert s.seed == 0  # the run's seed reached the strategy (its buffer's generator)


def check_joint(out, R, metrics, run_dir, seq_ft_metrics):
    final = metrics["groups"]["accuracy"]["final_average"]
    assert final >= seq_ft_metrics["groups"]["accuracy"]["final_average"]


TABLE = {
    "seq_ft": ([], check_seq_ft),
    "seq_lp": ([], check_seq_lp),
    "lora": ([], check_lora),
    "proteus": (["tasks.task_shift=3"], check_proteus),
    "duallora": (["tasks.task_shift=3"], check_duallora),
    "inflora": ([], check_inflora),
    "olora": ([], check_olora),
    "reglora": ([], check_reglora),
    "ewc": ([], check_ewc),
    "lwf": ([], check_lwf),
    "er": (["strategy.buffer_size=50"], check_er),
    # class-IL: there the bound is far from the lower bound (task-IL heads barely forget in 60 steps)
    "joint": (["tasks.scenario=class_il"], check_joint),
}


@pytest.mark.parametrize("strategy", list(TABLE))
def test_strategy_property_on_digits(strategy, digits_run):
    overrides, check = TABLE[strategy]
    if not (Path(CONF) / "strategy" / f"{strategy}.yaml").is_file():
        pytest.fail(f"conf/strategy/{strategy}.yaml is missing")
    result = digits_run(strategy, f"strategy={strategy}", *overrides)
    if strategy == "joint":
        check(*result, digits_run("seq_ft_class_il", "strategy=seq_ft",
                                  "tasks.scenario=class_il")[2])
    else:
        check(*result)
