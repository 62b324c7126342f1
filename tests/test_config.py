"""Validation of ``_target_`` nodes against their target's signature."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cl_bench.config import build, check_node
from cl_bench.errors import ConfigError
from cl_bench.strategies.lora import LoRA


def node(**kw):
    return OmegaConf.create({"_target_": "cl_bench.strategies.lora.LoRA", "name": "lora", **kw})


def test_valid_node_builds_with_types_converted():
    s = build(node(rank=4, alpha=8, target_modules=["qkv"]), "strategy")
    assert isinstance(s, LoRA) and (s.rank, s.alpha, s.target_modules) == (4, 8.0, ["qkv"])


@pytest.mark.parametrize("kw, message", [
    ({"rank": "abc"}, "strategy.rank: expected int, got 'abc'"),
    ({"rank": 2.5}, "strategy.rank: expected int, got 2.5"),
    ({"alpha": "x"}, "strategy.alpha: expected float"),
    ({"target_modules": "qkv"}, "strategy.target_modules: expected list"),
    ({"rnak": 4}, "strategy.rnak: unknown key for cl_bench.strategies.lora.LoRA; valid keys: rank"),
])
def test_bad_values_name_the_key(kw, message):
    with pytest.raises(ConfigError) as err:
        check_node(node(**kw), "strategy")
    assert message in str(err.value)


def test_constructor_errors_are_unwrapped():
    with pytest.raises(ConfigError, match=r"^strategy.rank: expected a positive int, got -1$"):
        build(node(rank=-1), "strategy")


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="strategy._target_: cannot import 'cl_bench.nope.X'"):
        check_node(OmegaConf.create({"_target_": "cl_bench.nope.X"}), "strategy")
