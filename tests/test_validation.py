"""Every top-level key's range is checked before any work, with one message naming the key."""

from __future__ import annotations

import math

import pytest

from cl_bench.config import MAX_SEED, validate
from cl_bench.errors import ConfigError
from cl_bench.runner import run

BAD = [  # (override, the key the message must name)
    ("train.max_steps=0", "train.max_steps"), ("train.max_steps=-3", "train.max_steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.eval_batch_size=-1", "train.eval_batch_size"),
    ("train.log_every_n_steps=0", "train.log_every_n_steps"),
    ("train.checkpoint_every_n_epochs=-1", "train.checkpoint_every_n_epochs"),
    ("train.checkpoint_min_interval_s=-5", "train.checkpoint_min_interval_s"),
    ("train.checkpoint_min_interval_s=nan", "train.checkpoint_min_interval_s"),
    ("train.checkpoint_min_interval_s=inf", "train.checkpoint_min_interval_s"),
    ("hardware.num_threads=-2", "hardware.num_threads"), ("hardware.num_threads=0", "hardware.num_threads"),
    ("hardware.num_nodes=0", "hardware.num_nodes"), ("hardware.precision=fp8", "hardware.precision"),
    ("hardware.accelerator=quantum", "hardware.accelerator"), ("hardware.devices=0", "hardware.devices"),
    ("hardware.devices=[]", "hardware.devices"), ("hardware.devices=-2", "hardware.devices"),
    ("hardware.devices=[0,-1]", "hardware.devices"), ("hardware.devices='0'", "hardware.devices"),
    ("hardware.devices=two", "hardware.devices"), ("eval.task_id=guess", "eval.task_id"),
    ("train.class_weights=inverse", "train.class_weights"),
    ("seed=-1", "seed"), (f"seed={MAX_SEED + 1}", "seed"), ("results_dir=''", "results_dir"),
    ("results_dir=' '", "results_dir"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_a_bad_value_is_refused_naming_its_key_before_any_work(compose_cfg, tmp_path, override, key):
    cfg = compose_cfg(override, f"tasks.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{key}: expected ") and "\n" not in message
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # nothing made


@pytest.mark.parametrize("override", [
    "train.max_steps=1", "train.checkpoint_every_n_epochs=0", "train.checkpoint_min_interval_s=0",
    "hardware.num_threads=1", "hardware.devices=auto", "hardware.devices=[0]",
    "hardware.devices=-1", "hardware.devices='2'", "hardware.devices='-1'",
    "hardware.precision=bf16-mixed", "train.class_weights=none",
    "eval.task_id=predicted", "seed=0", f"seed={MAX_SEED}"])
def test_the_boundary_values_pass(compose_cfg, override):
    validate(compose_cfg(override))


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=0", "train.max_steps: expected an int > 0, got 0 (int)"),
    ("train.checkpoint_min_interval_s=nan",
     "train.checkpoint_min_interval_s: expected a finite float >= 0, got nan (float)"),
    ("eval.task_id=guess", "eval.task_id: expected one of 'oracle', 'predicted', got 'guess' (str)"),
    ("hardware.devices=0", "hardware.devices: expected an int > 0 or one of -1, 'auto' or a "
                           "non-empty list of an int >= 0 or a non-zero int as a string, got 0 (int)"),
    (f"seed={MAX_SEED + 1}", f"seed: expected an int >= 0 and <= {MAX_SEED}, got {MAX_SEED + 1} (int)"),
    ("results_dir=' '", "results_dir: expected a non-blank string, got ' ' (str)"),
])
def test_the_message_states_the_declared_range(compose_cfg, override, message):
    """The schema's ranges are stated as every group key's (cl_bench.ranges.check_value)."""
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(override))
    assert str(err.value) == message


def test_from_the_command_line_one_line_exit_2_no_traceback(cli, tmp_path):
    for override in ("train.batch_size=0", "hardware.num_threads=-2"):
        proc = cli(override, "logger=none", f"results_dir={tmp_path}/r")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
        assert lines[0].startswith(f"clbench: error: {override.split('=')[0]}: expected")
        assert not (tmp_path / "cache").exists()  # refused before the data were generated
    assert math.isfinite(MAX_SEED * 1000 + 999) and MAX_SEED * 1000 + 999 < 2 ** 32


def test_a_lora_rank_wider_than_the_targeted_layers_is_refused_before_the_data(compose_cfg, tmp_path):
    """The issue's case: rank 100000 on the 192-wide ViT ran for minutes."""
    cfg = compose_cfg("strategy=lora", "strategy.rank=100000", f"tasks.cache_dir={tmp_path / 'c'}")
    with pytest.raises(ConfigError, match=r"^strategy.rank: 100000 exceeds the width of targeted "
                                          r"layer '.*' \(192\); use a rank <= 192$"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "c").exists()  # refused before the stream was generated
    validate(cfg)  # the top-level keys themselves are fine


@pytest.mark.parametrize("order,needle", [
    ("[]", "tasks.class_order lists 0 of split_mnist's 10 classes"),
    ("[0,1,2]", "tasks.class_order lists 3 of split_mnist's 10 classes"),
    ("[0,0,1,2,3,4,5,6,7,8]", "tasks.class_order: expected distinct class ids in [0, 10)"),
    ("[0,1,2,3,4,5,6,7,8,10]", "tasks.class_order: expected distinct class ids in [0, 10)")])
def test_a_class_order_that_cannot_fill_the_stream_names_the_key(cli, tmp_path, order, needle):
    proc = cli("tasks=split_mnist", f"tasks.class_order={order}", "logger=none",
               f"results_dir={tmp_path}/r")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("args, start", [
    (["strategy=lwf", "strategy.alpha=nan"], "strategy.alpha: expected a finite float >= 0"),
    (["strategy=lwf", "strategy.reduction=max"], "strategy.reduction: expected one of 'sum', 'mean'"),
    (["tasks.n_train=0"], "tasks.n_train: expected an int > 0"),
    (["strategy=nope"], "strategy=nope: no such option in conf/strategy; options: "),
    (["train.max_step=3"], "train.max_step: unknown key; valid keys: max_steps, "),
    (["strategy.rnak=3"], "strategy.rnak: unknown key; valid keys: "),
    (["seed=abc"], "seed: value 'abc' of type 'str' could not be converted to Integer"),
    (["train.max_steps=[1"], "train.max_steps=[1: cannot parse this override"),
])
def test_group_keys_and_composition_errors_exit_2_with_one_line_and_no_run_dir(cli, tmp_path,
                                                                                args, start):
    proc = cli(*args, "logger=none")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"clbench: error: {start}"), lines
    assert not (tmp_path / "results").exists()  # Hydra's run directory removed again
    assert not (tmp_path / "cache").exists()


def test_a_batch_larger_than_a_task_trains_on_the_whole_set_and_says_so(compose_cfg, tmp_path,
                                                                       caplog):
    cfg = compose_cfg("train.batch_size=9", "train.max_steps=2", "logger=none")  # 4 - 1 val
    with caplog.at_level("WARNING", logger="cl_bench.runner"):
        out = run(cfg, tmp_path / "run")
    assert out.metrics["complete"]
    said = [r.getMessage() for r in caplog.records if "exceeds task" in r.getMessage()]
    assert said == [f"train.batch_size=9 exceeds task {t}'s 3 training samples: every step uses "
                    "the whole training set" for t in ("tumour_seg", "brain_age")]
