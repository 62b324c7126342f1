"""tasks.n_val: a validation set carved from each task's training set, disjoint from test."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from cl_bench.config import build_stream
from cl_bench.errors import ConfigError
from cl_bench.runner import run
from tests.conftest import CONF

STREAMS = {
    "digits": [],
    "split_mnist": [],
    "seg_mnist": ["tasks.n_train=200", "tasks.n_test=50"],
    "brain_seg_age": ["tasks.size=16", "tasks.n_train=6", "tasks.n_test=2", "tasks.age_n_train=null",
                      "tasks.age_n_test=null", "tasks.n_val_by_task=null"],
}


def _cfg(stream: str, cache, *overrides: str):
    extra = [f"tasks.cache_dir={cache}"] if stream == "brain_seg_age" else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"tasks={stream}", *STREAMS[stream], *extra,
                                            *overrides])


def _hashes(dataset) -> list[str]:
    return [hashlib.sha1(dataset[i]["image"].numpy().tobytes()).hexdigest()
            for i in range(len(dataset))]


@pytest.mark.parametrize("stream", list(STREAMS))
def test_no_test_sample_is_in_training_or_validation(stream, data_cache):
    base = build_stream(_cfg(stream, data_cache, "tasks.n_val=0"))
    carved = build_stream(_cfg(stream, data_cache, "tasks.n_val=3", "seed=1"))
    for before, task in zip(base, carved):
        train, val, test = _hashes(task.train), _hashes(task.val), _hashes(task.test)
        assert len(val) == 3 and len(train) == len(before.train) - 3
        assert not set(train) & set(val)
        assert not set(test) & (set(train) | set(val))
        # carved from the training set: together they are the original training set
        assert sorted(train + val) == sorted(_hashes(before.train))
        assert task.info["n_val"] == 3


def test_the_split_is_deterministic_in_the_seed(data_cache):
    a = build_stream(_cfg("digits", data_cache, "tasks.n_val=5", "seed=0"))
    b = build_stream(_cfg("digits", data_cache, "tasks.n_val=5", "seed=0"))
    c = build_stream(_cfg("digits", data_cache, "tasks.n_val=5", "seed=1"))
    assert _hashes(a[0].val) == _hashes(b[0].val)
    assert _hashes(a[0].val) != _hashes(c[0].val)
    assert _hashes(a[0].val) != _hashes(a[1].val)


def test_regression_normalisation_comes_from_the_remaining_training_targets(data_cache):
    _, age = build_stream(_cfg("brain_seg_age", data_cache, "tasks.n_val=2"))
    ages = np.array([float(age.train[i]["label"]) for i in range(len(age.train))])
    assert len(ages) == 4
    assert age.target_mean == pytest.approx(ages.mean())
    assert age.target_std == pytest.approx(max(ages.std(), 1.0))
    _, fixed = build_stream(_cfg("brain_seg_age", data_cache, "tasks.n_val=2",
                                 "tasks.age_scale=10.0"))
    assert fixed.target_std == 10.0  # a user-fixed scale is kept


@pytest.mark.parametrize("value, message", [
    (-1, "tasks.n_val: expected an int >= 0"),
    (6, "tasks.n_val \\(6\\) must be smaller than task 'tumour_seg''s 6 training samples"),
])
def test_bad_n_val_is_refused_naming_the_key(value, message, data_cache):
    with pytest.raises(ConfigError, match=message):
        build_stream(_cfg("brain_seg_age", data_cache, f"tasks.n_val={value}"))


def test_a_run_writes_the_validation_matrix(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["tasks=digits", "backbone=vit2d_digits",
                                           "strategy=seq_ft", "tasks.n_val=10",
                                           "train.max_steps=3", "train.progress_bar=false",
                                           "logger=none"])
    run(cfg, tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    V = pd.read_csv(tmp_path / "matrix_val.csv", index_col=0)
    assert list(V.index) == list(R.index) and list(V.columns) == list(R.columns)
    assert ((V >= 0) & (V <= 1)).all().all()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    val = metrics["val"]
    assert val["complete"] and set(val["details"]) == set(V.index)
    # the val block is computed from matrix_val.csv as the top level is from matrix.csv
    assert val["stream"]["final_average"] == pytest.approx(V.iloc[-1].mean(), abs=1e-6)
    assert metrics["stream"]["final_average"] == pytest.approx(R.iloc[-1].mean(), abs=1e-6)


def test_max_tasks_keeps_the_first_tasks(data_cache):
    stream = build_stream(_cfg("digits", data_cache, "+tasks.max_tasks=2", "tasks.n_val=4"))
    assert [t.name for t in stream] == ["digits_0_1", "digits_2_3"]
    assert all(len(t.val) == 4 for t in stream)
    with pytest.raises(ConfigError, match=r"^tasks.max_tasks: expected an int > 0 or None, got 0"):
        build_stream(_cfg("digits", data_cache, "+tasks.max_tasks=0"))
