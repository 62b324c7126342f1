"""Validation of ``_target_`` nodes against their target's signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cl_bench.config import build, check_node
from cl_bench.errors import ConfigError
from cl_bench.strategies.lora import LoRA

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def node(**kw):
    return OmegaConf.create({"_target_": "cl_bench.strategies.lora.LoRA", "name": "lora", **kw})


def test_valid_node_builds_with_types_converted():
    s = build(node(rank=4, alpha=8, target_modules=["qkv"]), "strategy")
    assert isinstance(s, LoRA) and (s.rank, s.alpha, s.target_modules) == (4, 8.0, ["qkv"])


@pytest.mark.parametrize("kw, message", [
    ({"rank": "abc"}, "strategy.rank: expected an int > 0, got 'abc'"),
    ({"rank": 2.5}, "strategy.rank: expected an int > 0, got 2.5"),
    ({"rank": -1}, "strategy.rank: expected an int > 0, got -1 (int)"),
    ({"dropout": 1.0}, "strategy.dropout: expected a finite float >= 0 and < 1, got 1.0"),
    ({"lr": 0.0}, "strategy.lr: expected a finite float > 0, got 0.0"),
    ({"alpha": "x"}, "strategy.alpha: expected a finite float"),
    ({"alpha": float("nan")}, "strategy.alpha: expected a finite float"),
    ({"target_modules": "qkv"}, "strategy.target_modules: expected a list"),
    ({"rnak": 4}, "strategy.rnak: unknown key for cl_bench.strategies.lora.LoRA; valid keys: rank"),
])
def test_bad_values_name_the_key(kw, message):
    with pytest.raises(ConfigError) as err:
        check_node(node(**kw), "strategy")
    assert message in str(err.value)


def test_constructor_errors_are_unwrapped():
    # in range for check_node (list[str]), refused by LoRA.__init__ itself
    with pytest.raises(ConfigError, match=r"^strategy.target_modules: expected a non-empty list "
                                          r"of module names or null \(.*\)$"):
        build(node(target_modules=[]), "strategy")


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="strategy._target_: cannot import 'cl_bench.nope.X'"):
        check_node(OmegaConf.create({"_target_": "cl_bench.nope.X"}), "strategy")


def test_brain_mri_fm_preset_is_the_papers_sweep():
    """experiment=brain_mri_fm: seq_ft/seq_lp/lora + the scratch reference x 3 seeds on the
    embedded stream, its own sweep directory; the same preset takes the real stream with
    tasks=brats_ixi."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=brain_mri_fm"], return_hydra_config=True)
        real = compose("config", overrides=["experiment=brain_mri_fm", "tasks=brats_ixi"],
                       return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.strategy == "seq_ft,seq_lp,lora,scratch" and params.seed == "0,1,2"
    assert cfg.backbone.name == "swin_unetr"
    assert cfg.tasks.name == "brain_seg_age" and real.tasks.name == "brats_ixi"
    assert "brain_mri_fm" in cfg.hydra.sweep.dir  # the preset's key wins over config.yaml's


def test_slurm_hardware_feeds_the_submitit_launcher():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["hardware=slurm", "hardware.slurm.partition=gpu",
                                           "hardware.slurm.cpus_per_task=8"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.cpus_per_task == 8
    assert cfg.hardware.num_threads == 8 and launcher.mem_gb == 8


GROUP_OPTIONS = [(g, p.stem) for g in ("strategy", "tasks", "backbone", "logger")
                 for p in sorted(Path(CONF, g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_shipped_default_is_inside_its_declared_range(group, option):
    """Each option's keys fit the ranges on its target's signature (cl_bench.ranges), and the
    signature's annotations resolve (an unresolvable one would disable the range checks)."""
    import inspect
    import typing

    from hydra import compose, initialize_config_dir

    from cl_bench.config import STREAM_KEYS, locate

    extra = ["tasks.root=/data/VOCdevkit/VOC2012"] if option.startswith("voc") else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}"] + extra)
    node = cfg[group]
    if not node.get("_target_"):
        return  # logger=none
    check_node(node, group)
    if node._target_.startswith("cl_bench."):
        target = locate(node._target_)
        fn = target.__init__ if inspect.isclass(target) else target
        hints = typing.get_type_hints(fn, include_extras=True)
        assert all(k in hints for k in node if not k.startswith("_") and k != "name"
                   and not (group == "tasks" and k in STREAM_KEYS)), hints
