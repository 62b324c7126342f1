"""Property-based (hypothesis): every key of every group option refuses a bad value up front.

For each option of ``conf/strategy``, ``conf/backbone``, ``conf/tasks`` and ``conf/logger`` and
each of its keys, values are drawn that its declared type and range (the target's signature,
:mod:`cl_bench.ranges`) exclude: a wrong type, NaN / infinity, a value beyond a bound (negative,
zero, huge), an unknown choice, an empty string, a scalar for a list. Each must stop
:func:`cl_bench.runner.run` with one line naming ``<group>.<key>`` before any directory or data
is made. The boundary values themselves pass, and a run at the boundaries completes.
"""

from __future__ import annotations

import copy
import inspect
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from cl_bench.config import STREAM_KEYS, check_node, locate
from cl_bench.errors import ConfigError
from cl_bench.ranges import bounds_of, type_hints
from cl_bench.runner import run

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("strategy", "backbone", "tasks", "logger")
#: examples drawn per key (derandomised: the same cases on every machine)
EXAMPLES = 12
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])


#: should a check be missing, the run it lets through is one step on a tiny stream, not minutes
SMALL = {"strategy": ["tasks=digits", "backbone=vit2d_digits", "logger=none"],
         "logger": ["tasks=digits", "backbone=vit2d_digits"],
         "backbone": ["logger=none"], "tasks": ["logger=none"]}


def _compose(group: str, option: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=SMALL[group] + [
            f"{group}={option}", "train.max_steps=1", "train.progress_bar=false"])


def _takes_kwargs(target: str) -> bool:
    obj = locate(target)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _hints(target: str) -> dict:
    obj = locate(target)
    return type_hints(obj.__init__ if inspect.isclass(obj) else obj)


def _split(hint):
    """``(base type, bounds, allows None)`` of an annotation; base may be a Literal or list."""
    allows_none = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        allows_none = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, [], allows_none
        hint = rest[0]
    bounds = []
    if typing.get_origin(hint) is Annotated:
        hint, *meta = typing.get_args(hint)
        bounds = bounds_of(tuple(meta))
    return hint, bounds, allows_none


def _beyond(base, bounds) -> st.SearchStrategy | None:
    """Numbers outside the declared bounds (at the excluded bound itself, past it, huge)."""
    outs = []
    for name, b in bounds:
        if name in ("gt", "ge"):
            top = b if name == "gt" else (b - 1 if base is int else b - 1e-9)
            outs.append(st.integers(max_value=math.floor(top)) if base is int
                        else st.floats(max_value=top, allow_nan=False, allow_infinity=False))
        else:
            low = b if name == "lt" else (b + 1 if base is int else b + 1e-9)
            outs.append(st.integers(min_value=math.ceil(low)) if base is int
                        else st.floats(min_value=low, allow_nan=False, allow_infinity=False))
    return st.one_of(outs) if outs else None


def bad_values(hint) -> st.SearchStrategy | None:
    """Values a key of annotation ``hint`` must refuse; ``None`` if the type is too loose to say."""
    base, bounds, _ = _split(hint)
    texts = st.text(max_size=6)  # includes "" (empty)
    lists = st.lists(st.integers(), max_size=2)
    if base is bool:
        return st.one_of(st.integers(), st.floats(), texts)
    if base is int:
        choices = [texts, st.booleans(), lists,
                   st.floats(allow_nan=True).filter(lambda v: not float(v).is_integer())]
    elif base is float:
        choices = [texts, st.booleans(), lists,
                   st.sampled_from([float("nan"), float("inf"), float("-inf")])]
    elif base is str:
        return st.one_of(st.integers(), st.floats(), st.booleans(), lists)
    elif typing.get_origin(base) is Literal:
        options = typing.get_args(base)
        return st.one_of(texts.filter(lambda v: v not in options), st.integers(), lists)
    elif typing.get_origin(base) in (list, tuple):
        (item, *_) = typing.get_args(base) or (None,)
        inner = bad_values(item) if item is not None else None
        scalars = st.one_of(st.integers(), texts.filter(bool))
        return scalars if inner is None else st.one_of(scalars, st.lists(inner, min_size=1,
                                                                       max_size=2))
    else:
        return None
    beyond = _beyond(base, bounds)
    return st.one_of(choices + ([beyond] if beyond is not None else []))


def _specs():
    """``(group, option, key, hint)`` for every key of every group option."""
    out = []
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            node = OmegaConf.load(path)
            if not node.get("_target_"):  # logger=none
                continue
            hints = _hints(node._target_)
            if group == "tasks":  # keys of every stream, applied by the runner
                hints = {**hints, **STREAM_KEYS}
            for key in node:
                if key.startswith("_") or key in ("name", "defaults"):  # defaults: Hydra's list
                    continue
                out.append((group, path.stem, key, hints.get(key)))
    return out


SPECS = _specs()
CHECKED = [s for s in SPECS if s[3] is not None and bad_values(s[3]) is not None]
_CFG: dict = {}


def base_cfg(group: str, option: str):
    if (group, option) not in _CFG:
        _CFG[group, option] = _compose(group, option)
    return copy.deepcopy(_CFG[group, option])


def refused(cfg, tmp: Path, key: str) -> None:
    """``run`` stops with one line naming ``key``, having made no directory and no data."""
    run_dir, cache = tmp / "run", tmp / "cache"
    with pytest.raises(ConfigError) as err:
        run(cfg, run_dir)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and "\n" not in message, message
    assert not run_dir.exists() and not cache.exists()


def test_every_group_key_is_covered():
    """The coverage the property test below has: every key with a type it can break."""
    keys = {(g, o, k) for g, o, k, _ in SPECS}
    assert len(SPECS) > 150 and len(keys) == len(SPECS)
    # untyped: only keys a third-party target takes through **kwargs (wandb.init's group, tags)
    untyped = [(g, o, k) for g, o, k, h in SPECS if h is None]
    for g, o, k in untyped:
        target = OmegaConf.load(CONF / g / f"{o}.yaml")._target_
        assert not target.startswith("cl_bench.") and k not in inspect.signature(
            locate(target)).parameters, f"{g}={o}: {k} has no annotation on its target"
    assert len(CHECKED) >= 0.9 * len(SPECS), len(CHECKED)


@pytest.mark.parametrize("group, option, key, hint", CHECKED,
                         ids=[f"{g}={o}-{k}" for g, o, k, _ in CHECKED])
def test_a_bad_value_is_refused_naming_the_key(group, option, key, hint, tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))

    @PROFILE
    @given(value=bad_values(hint))
    def check(value):
        cfg = base_cfg(group, option)
        OmegaConf.update(cfg, f"{group}.{key}", value, merge=False)
        refused(cfg, tmp_path, f"{group}.{key}")

    check()


@pytest.mark.parametrize("group", GROUPS)
def test_an_unknown_key_is_refused_listing_the_valid_ones(group, tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    # targets with **kwargs take any key (wandb's logger passes them to wandb.init)
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml")
                     if OmegaConf.load(p).get("_target_")
                     and not _takes_kwargs(OmegaConf.load(p)._target_))

    @PROFILE
    @given(option=st.sampled_from(options), key=st.from_regex(r"[a-z]{2,8}_?[a-z]{0,4}",
                                                               fullmatch=True))
    def check(option, key):
        cfg = base_cfg(group, option)
        if key in cfg[group] or key in inspect.signature(
                locate(cfg[group]._target_)).parameters:
            return
        with open_dict(cfg):
            cfg[group][key] = 1
        refused(cfg, tmp_path, f"{group}.{key}")

    check()


def _inside(base, bounds) -> list:
    """The boundary values a key's declared range admits (a bound itself, or the next int)."""
    out = []
    for name, b in bounds:
        if name in ("ge", "le"):
            out.append(b)
        elif base is int:
            out.append(b + 1 if name == "gt" else b - 1)
    return out


BOUNDARIES = [(g, o, k, v) for g, o, k, h in SPECS if h is not None
              for v in _inside(*_split(h)[:2])]


@pytest.mark.parametrize("group, option, key, value", BOUNDARIES,
                         ids=[f"{g}={o}-{k}={v}" for g, o, k, v in BOUNDARIES])
def test_the_boundary_values_pass_the_checks(group, option, key, value):
    cfg = base_cfg(group, option)
    OmegaConf.update(cfg, f"{group}.{key}", value, merge=False)
    check_node(cfg[group], group)


@pytest.mark.parametrize("overrides", [
    ["strategy=lwf", "strategy.alpha=0"],
    ["strategy=ewc", "strategy.ewc_lambda=0", "strategy.fisher_max_samples=1"],
    ["strategy=er", "strategy.buffer_size=1", "strategy.replay_batch_size=1", "strategy.alpha=0"],
    ["strategy=lora", "strategy.rank=1", "strategy.dropout=0"],
])
def test_a_run_at_the_boundaries_completes(overrides, tmp_path):
    from cl_bench.config import MAX_SEED

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "tasks=digits", "tasks.n_tasks=2", "train.max_steps=1", "train.batch_size=1",
            "train.eval_batch_size=1", "train.log_every_n_steps=1", "train.progress_bar=false",
            "train.checkpoint_every_n_epochs=0", "train.checkpoint_min_interval_s=0",
            "hardware.num_threads=1", "logger=none", f"seed={MAX_SEED}", *overrides])
    out = run(cfg, tmp_path / "run")
    assert out.metrics["complete"] and (tmp_path / "run" / "matrix.csv").is_file()
