"""Task-IL vs class-IL runs and the task-agnostic (predicted task id) evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.data.digits import make_digits
from cl_bench.errors import ConfigError
from cl_bench.evaluation import evaluate_task
from cl_bench.models.continual import make_model
from cl_bench.runner import run
from cl_bench.strategies.base import Strategy

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BASE = ["tasks=digits", "tasks.n_tasks=2", "train.max_steps=60", "train.batch_size=32",
        "train.progress_bar=false", "train.checkpoint_every_n_epochs=0", "logger=none",
        "hardware.num_threads=1"]  # tiny models: a second thread only adds overhead


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=BASE + list(overrides))


def test_class_il_seq_ft_keeps_only_the_last_task(tmp_path):
    run(cfg("strategy=seq_ft", "tasks.scenario=class_il"), tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.loc["after_digits_0_1", "digits_0_1"] > 0.8
    assert R.loc["after_digits_2_3", "digits_0_1"] < 0.2  # old classes lose to the new ones
    assert R.loc["after_digits_2_3", "digits_2_3"] > 0.6
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["units"]["digits_0_1"] == {"metric": "accuracy", "units": "", "higher_is_better": True}


def test_per_task_modules_refuse_class_il(tmp_path):
    with pytest.raises(ConfigError, match="strategy=lora keeps one module per task"):
        run(cfg("strategy=lora", "tasks.scenario=class_il"), tmp_path)
    assert not (tmp_path / "matrix.csv").exists()


def test_predicted_task_id_needs_a_task_agnostic_strategy(tmp_path):
    with pytest.raises(ConfigError, match="eval.task_id=predicted: strategy=seq_ft"):
        run(cfg("strategy=seq_ft", "eval.task_id=predicted"), tmp_path)


class AlwaysFirst(Strategy):
    """Routes every sample to task 0: a retrieval that is right for task 0 only."""

    name = "always_first"
    task_agnostic = True

    def predict_task_id(self, x):
        return torch.zeros(len(x), dtype=torch.long)


def test_predicted_ids_route_samples_and_score_in_global_classes():
    torch.manual_seed(0)
    stream = make_digits(n_tasks=2)
    model = make_model(1, 8, 2, 32, 64, 2, 4, 2)
    model.add_heads(stream)
    strategy = AlwaysFirst()
    strategy.setup(model, stream)
    oracle = [evaluate_task(model, strategy, t, 64) for t in stream]
    pred = [evaluate_task(model, strategy, t, 64, stream=stream, predicted=True) for t in stream]
    assert pred[0]["retrieval"] == 1.0 and pred[1]["retrieval"] == 0.0
    assert pred[0]["accuracy"] == pytest.approx(oracle[0]["accuracy"])  # same head, same answers
    # task 1's images answered by task 0's head get classes {0, 1}: never task 1's {2, 3}
    assert pred[1]["accuracy"] == 0.0
    assert pred[1]["retrieval_ms_per_sample"] > 0
