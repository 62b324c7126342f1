"""Every default is said once, or the two places agree: a value a config group's YAML sets for a
key of its ``_target_`` that also has a default in the target's signature is that default, and
``conf/config.yaml``'s blocks (``train``, ``eval``, the default ``hardware`` option, the
top-level keys) equal the schema's dataclass defaults (cl_bench/config.py).

A run uses the YAML's value (Hydra passes every key it sets), so a signature default that
differs is what a direct Python call gets and no run ever had. Compared after
``OmegaConf.to_container`` (lists and tuples by content); a YAML value that is ``???`` or holds
an interpolation is not a default and is skipped. Only targets of this repository
(``cl_bench.``, ``hydra_plugins.``) are read: a library's defaults (Lightning's loggers, Optuna's
samplers) are the library's, and the YAML is the one place we set them.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from cl_bench import config as schema
from cl_bench.config import locate

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OURS = ("cl_bench.", "hydra_plugins.")

#: targets that take ``**kwargs`` and hand them on whole: the signature that holds the defaults
DELEGATES = {
    "hydra_plugins.clbench_optuna_sweeper.optuna_sweeper.ClBenchOptunaSweeper":
        "cl_bench.search.sweeper.OptunaSearch",
}

#: ``(YAML file, key)`` whose YAML value and signature default differ on purpose, each with why
EXCEPTIONS = {
    ("conf/tasks/brain_seg_age.yaml", "age_n_train"):
        "the default None is a sentinel (the age task's sizes follow n_train / n_test); the "
        "stream's YAML gives the age task its own sizes, chosen for an MAE's standard error "
        "(its comment)",
    ("conf/tasks/brain_seg_age.yaml", "age_n_test"):
        "as age_n_train: None means n_test",
}

#: ``(YAML file, key)`` where the signature's default is to follow the YAML (issue 41), in a
#: module another change owns; listed here until it does (test_pending_disagreements_still_differ
#: then says to remove the entry)
PENDING = {
    ("conf/backbone/swin_unetr.yaml", "weights"):
        "cl_bench.models.continual.make_swin_model(weights=None): YAML swin_brain_fm",
    ("conf/backbone/unet2d.yaml", "weights"):
        "cl_bench.models.continual.make_unet_model(weights=None): YAML unet2d_uci",
}


def _plain(value: Any) -> Any:
    """A value compared by content: OmegaConf containers as Python ones, tuples as lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _has_interpolation(node: Any, key: Any) -> bool:
    """Whether ``node[key]`` is ``???`` or an interpolation, or holds one anywhere inside."""
    if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
        return True
    child = node._get_node(key)
    if isinstance(child, DictConfig):
        return any(_has_interpolation(child, k) for k in child)
    if isinstance(child, ListConfig):
        return any(_has_interpolation(child, i) for i in range(len(child)))
    return False


def signature_defaults(target: Any) -> dict[str, Any]:
    """``{parameter: default}`` of a callable's parameters that have one. For a class: its
    ``__init__``, then, while an ``__init__`` takes ``**kwargs`` (handed to ``super()``), the
    base classes' ``__init__`` (a parameter named lower in the chain wins)."""
    out: dict[str, Any] = {}
    if inspect.isclass(target):
        inits = [vars(k)["__init__"] for k in target.__mro__ if "__init__" in vars(k)]
    else:
        inits = [target]
    for fn in inits:
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty:
                out.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def _target_nodes(node: Any, key: str = ""):
    """``(dotted key, node)`` of every mapping with a ``_target_`` in a YAML file's tree."""
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node and isinstance(node._get_node("_target_")._value(), str):
        yield key, node
    for k in node:
        yield from _target_nodes(node._get_node(k), f"{key}.{k}" if key else str(k))


def _ours() -> list[tuple[str, str, DictConfig]]:
    """``(YAML file, dotted key, node)`` of every ``_target_`` node of ours under conf/."""
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        for key, node in _target_nodes(OmegaConf.load(path)):
            if node._target_.startswith(OURS):
                out.append((path.relative_to(ROOT).as_posix(), key, node))
    return out


NODES = _ours()


def _per_option_keys() -> dict[str, set[str]]:
    """``{target: keys}`` that the options sharing the target set to different values (a
    backbone's size): each option's own choice, which no single default can match."""
    values: dict[str, dict[str, list]] = {}
    for _, _, node in NODES:
        for name in node:
            if not str(name).startswith("_") and not _has_interpolation(node, name):
                values.setdefault(node._target_, {}).setdefault(name, []).append(
                    _plain(node[name]))
    return {t: {k for k, vs in keys.items() if any(v != vs[0] for v in vs)}
            for t, keys in values.items()}


def _disagreements(file: str, key: str, node: DictConfig) -> list[str]:
    target = locate(DELEGATES.get(node._target_, node._target_))
    defaults = signature_defaults(target)
    per_option = _per_option_keys().get(node._target_, set())
    out = []
    for name in node:
        if (str(name).startswith("_") or name == "defaults" or name not in defaults
                or name in per_option or (file, name) in EXCEPTIONS or (file, name) in PENDING
                or _has_interpolation(node, name)):
            continue
        yaml_value, default = _plain(node[name]), _plain(defaults[name])
        if yaml_value != default:
            out.append(f"{file}: {key + '.' if key else ''}{name}: YAML {yaml_value!r}, "
                       f"{node._target_} default {default!r}")
    return out


def test_the_scan_reads_every_group_option_with_a_target():
    files = {f for f, _, _ in NODES}
    for group in ("strategy", "backbone", "tasks"):
        options = {p.relative_to(ROOT).as_posix() for p in (CONF / group).glob("*.yaml")
                   if "_target_" in p.read_text()}
        assert options and options <= files, sorted(options - files)
    assert "conf/hydra/sweeper/optuna.yaml" in files


@pytest.mark.parametrize("file,key,node", NODES, ids=[f"{f}:{k}" if k else f for f, k, _ in NODES])
def test_a_yaml_value_equals_its_signature_default(file, key, node):
    assert not _disagreements(file, key, node), "\n".join(_disagreements(file, key, node))


def test_exceptions_and_pending_entries_name_keys_the_yaml_sets():
    set_keys = {(f, str(name)) for f, _, node in NODES for name in node}
    assert not (set(EXCEPTIONS) | set(PENDING)) - set_keys


def test_pending_disagreements_still_differ():
    """An entry of PENDING whose signature now follows the YAML is to be removed from it."""
    agree = []
    for file, key, node in NODES:
        defaults = signature_defaults(locate(DELEGATES.get(node._target_, node._target_)))
        for name in node:
            if (file, str(name)) in PENDING and name in defaults and (
                    _plain(node[name]) == _plain(defaults[name])):
                agree.append(f"{file}: {name}: now agrees; remove it from PENDING")
    assert not agree, "\n".join(agree)


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _config_yaml_blocks() -> list[tuple[str, type, DictConfig]]:
    """``(where, schema dataclass, YAML mapping)``: config.yaml's top level, its ``train`` and
    ``eval`` blocks, and the ``hardware`` option its defaults list picks."""
    cfg = OmegaConf.load(CONF / "config.yaml")
    (hardware,) = [d["hardware"] for d in cfg.defaults if isinstance(d, DictConfig)
                   and "hardware" in d]
    top = OmegaConf.create({k: v for k, v in cfg.items()
                            if k not in ("defaults", "hydra") and not isinstance(v, DictConfig)})
    return [("conf/config.yaml", schema.ClBenchConfig, top),
            ("conf/config.yaml: train", schema.TrainConfig, cfg.train),
            ("conf/config.yaml: eval", schema.EvalConfig, cfg.eval),
            (f"conf/hardware/{hardware}.yaml", schema.HardwareConfig,
             OmegaConf.load(CONF / "hardware" / f"{hardware}.yaml"))]


@pytest.mark.parametrize("where,cls,block", _config_yaml_blocks(),
                         ids=[w for w, _, _ in _config_yaml_blocks()])
def test_config_yaml_equals_the_schemas_defaults(where, cls, block):
    defaults = _dataclass_defaults(cls)
    assert set(block) <= set(defaults), sorted(set(block) - set(defaults))
    differ = [f"{where}: {name}: YAML {_plain(block[name])!r}, {cls.__name__} default "
              f"{_plain(defaults[name])!r}" for name in block
              if not _has_interpolation(block, name)
              and _plain(block[name]) != _plain(defaults[name])]
    assert not differ, "\n".join(differ)
