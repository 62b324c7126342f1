"""Validation of ``_target_`` nodes against their target's signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cl_bench.config import build, check_node
from cl_bench.errors import ConfigError
from cl_bench.strategies.ewc import EWC
from cl_bench.strategies.lora import LoRA
from cl_bench.strategies.lwf import LwF
from cl_bench.strategies.proteus import Proteus

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
    ({"target_modules": "qkv"}, "strategy.target_modules: expected a non-empty list"),
    ({"rnak": 4}, "strategy.rnak: unknown key for cl_bench.strategies.lora.LoRA; valid keys: rank"),
])
def test_bad_values_name_the_key(kw, message):
    with pytest.raises(ConfigError) as err:
        check_node(node(**kw), "strategy")
    assert message in str(err.value)


def test_constructor_errors_are_unwrapped():
    # in range for check_node (a string), refused by RegLoRA.__init__ itself (not importable)
    reglora = OmegaConf.create({"_target_": "cl_bench.strategies.reglora.RegLoRA",
                                "data_transform": "os.no_such_function"})
    with pytest.raises(ConfigError, match=r"^strategy.data_transform: cannot import "
                                          r"'os.no_such_function' \(.*\)$"):
        build(reglora, "strategy")
    # an empty list is out of the declared range (NonEmptyStrList), refused before building
    with pytest.raises(ConfigError, match=r"^strategy.target_modules: expected a non-empty list"):
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


# ------------------------------------------------------- one way to declare and check a range
@pytest.mark.parametrize("make, message", [
    (lambda: LoRA(rank=0), "strategy.rank: expected an int > 0, got 0 (int)"),
    (lambda: LoRA(target_modules=[]), "strategy.target_modules: expected a non-empty list"),
    (lambda: EWC(gamma=1.5), "strategy.gamma: expected a finite float > 0 and <= 1, got 1.5 (float)"),
    (lambda: Proteus(rank=True), "strategy.rank: expected an int > 0, got True (bool)"),
    (lambda: LwF(reduction="max"), "strategy.reduction: expected one of 'sum', 'mean', got 'max' (str)"),
])
def test_a_direct_constructor_call_is_checked_against_the_annotations(make, message):
    """Python callers get the same check and message as a Hydra node (cl_bench.ranges.checked,
    applied to every Strategy subclass's __init__)."""
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value).startswith(message)


def test_direct_call_and_check_node_give_the_same_message():
    with pytest.raises(ConfigError) as direct:
        LoRA(dropout=1.0)
    with pytest.raises(ConfigError) as hydra:
        check_node(node(dropout=1.0), "strategy")
    assert str(direct.value) == str(hydra.value)


def _repeated_range_checks(root: Path) -> list[str]:
    """``if`` statements that raise ConfigError on a range of a single constructor parameter.

    Heuristic (simple on purpose): in every constructor (an ``__init__`` or a function decorated
    with ``checked(...)``) of ``root``, an ``if`` whose body raises ``ConfigError(...)`` directly
    and whose test is built only of comparisons, ``not``/``and``/``or``, arithmetic, constants
    (literals and UPPER_CASE names), ``isinstance``/``len``/``math.isfinite`` calls and exactly
    one variable, that variable being a parameter (or a loop variable over a literal tuple, as in
    ``for key, value in (("rank", rank), ...)``). Such a check can only restate a range, which
    belongs in the parameter's annotation (cl_bench.ranges). Checks relating two parameters, or a
    parameter to the model or to files, are not matched.
    """
    import ast

    allowed = (ast.BoolOp, ast.UnaryOp, ast.Compare, ast.BinOp, ast.Name, ast.Constant, ast.Tuple,
               ast.List, ast.expr_context, ast.boolop, ast.unaryop, ast.cmpop, ast.operator)
    helpers = {"isinstance", "len", "int", "float", "bool", "str", "math"}
    hits = []
    for path in sorted(root.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef) or not (
                    fn.name == "__init__" or any("checked" in ast.unparse(d)
                                                 for d in fn.decorator_list)):
                continue
            args = fn.args
            params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs} - {"self"}
            for loop in ast.walk(fn):
                if isinstance(loop, ast.For) and isinstance(loop.iter, (ast.Tuple, ast.List)):
                    params |= {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
            for stmt in ast.walk(fn):
                if not (isinstance(stmt, ast.If) and any(
                        isinstance(s, ast.Raise) and isinstance(s.exc, ast.Call)
                        and getattr(s.exc.func, "id", None) == "ConfigError" for s in stmt.body)):
                    continue
                simple = True
                for n in ast.walk(stmt.test):
                    if isinstance(n, ast.Call):
                        simple &= ast.unparse(n.func) in ("isinstance", "len", "math.isfinite")
                    elif isinstance(n, ast.Attribute):
                        simple &= ast.unparse(n) == "math.isfinite"
                    else:
                        simple &= isinstance(n, allowed)
                names = {n.id for n in ast.walk(stmt.test) if isinstance(n, ast.Name)
                         and n.id not in helpers and not n.id.isupper()}
                if simple and len(names) == 1 and names <= params:
                    hits.append(f"{path.relative_to(root.parent)}:{stmt.lineno}: "
                                f"if {ast.unparse(stmt.test)}: raise ConfigError")
    return hits


def test_no_constructor_repeats_a_declared_range_by_hand():
    """Acceptance criterion of issue 26: no ``raise ConfigError`` in cl_bench/ restates a range
    (see :func:`_repeated_range_checks` for what is matched)."""
    assert _repeated_range_checks(Path(__file__).resolve().parents[1] / "cl_bench") == []


def test_the_scan_finds_a_hand_written_range(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "class S:\n"
        "    def __init__(self, rank: int = 8, lo: int = 0, hi: int = 1):\n"
        "        for key, value in ((\"rank\", rank),):\n"
        "            if value <= 0:\n"
        "                raise ConfigError(key)\n"
        "        if not 0 < rank <= 10 or isinstance(rank, bool):\n"
        "            raise ConfigError('rank')\n"
        "        if lo > hi:  # two parameters: a rule, not a range\n"
        "            raise ConfigError('lo')\n")
    assert sorted(h.split(": ")[0] for h in _repeated_range_checks(tmp_path / "pkg")) == [
        "pkg/m.py:4", "pkg/m.py:6"]
