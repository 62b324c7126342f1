"""Where the paper's claims are judged: the runs split into settings (one stream, backbone and
shared config values each, where the strategies are compared), conf/'s default setting first,
and each setting's heading in ``claims.md``.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
from omegaconf import OmegaConf

from cl_bench.report.groups import group_keys, iter_groups, short_keys
from cl_bench.report.load import _flatten


def _claim_tasks(spec) -> set[str]:
    """Every task a claim definition (or a part of one) reads."""
    if isinstance(spec, list):
        return set().union(*map(_claim_tasks, spec)) if spec else set()
    if not isinstance(spec, dict):
        return set()
    found = {spec[k] for k in ("final", "just_learned", "bwt", "task")
             if isinstance(spec.get(k), str)}
    return found.union(*map(_claim_tasks, spec.values()))


def _settings(runs: pd.DataFrame, tasks: set[str]) -> list[tuple[str, dict, pd.DataFrame]]:
    """The runs split by the group keys but ``strategy``, the config groups' names (``tasks``,
    ``backbone`` again) and any key some runs lack (a strategy's own hyper-parameter): one
    stream, backbone and shared settings each, where the strategies are compared; only those
    whose runs measured ``tasks`` (maybe none). Each as ``(label, values, runs)``: the label
    ``stream / backbone`` (`` / key=value`` for any other key) and ``{key: value}`` (``tasks``,
    ``backbone`` and config keys)."""
    keys = [k for k in group_keys(runs) if k != "strategy" and not k.endswith(".name")
            and runs[k].notna().all()]
    groups = iter_groups(runs, keys) if keys else [({}, runs)]
    out = []
    for found, g in groups:
        if any(tasks <= set(m.columns) for m in g["_matrix"]):
            values = tuple(found[k] for k in keys)
            named = {k.removeprefix("cfg:"): v for k, v in zip(keys, values)}
            out.append((" / ".join(f"{k[4:]}={v}" if k.startswith("cfg:") else str(v)
                                   for k, v in zip(keys, values)) or "all runs", named, g))
    return out


@functools.lru_cache(maxsize=1)
def _conf_default() -> dict:
    """The default config of conf/ (Hydra's compose API, no overrides), flattened as
    :func:`_load_run` reads a run's (``group.key`` -> value, lists as JSON), plus ``tasks`` and
    ``backbone``: the groups' names; ``{}`` where conf/ cannot be composed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cl_bench.composition import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # an app ran in this process before (tests)
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config")
        flat = _flatten(OmegaConf.to_container(cfg, resolve=False))
    except (HydraException, OmegaConfBaseException, OSError, ValueError):
        return {}
    flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in flat.items()}
    return dict(flat, tasks=flat.get("tasks.name"), backbone=flat.get("backbone.name"))


def _default_first(settings: list, default: dict) -> tuple[list, bool]:
    """``settings`` (:func:`_settings`) with the default one first: the one whose every value
    equals ``default``'s (keys the default lacks are not compared); then by how many values
    equal it, more runs first, as found. Returns the order and whether the first is the
    default."""
    def same(key, value) -> bool:
        return key in default and (value == default[key]
                                   or str(value) == str(default[key]))  # lists: JSON

    def agree(setting) -> int:
        return sum(same(k, v) for k, v in setting[1].items())

    order = [s for _, s in sorted(enumerate(settings),
                                  key=lambda p: (-agree(p[1]), -len(p[1][2]), p[0]))]
    exact = bool(default) and bool(order) and all(same(k, v) for k, v in order[0][1].items()
                                                  if k in default)
    return order, exact


def _headings(settings: list, exact: bool, default: dict) -> tuple[list[str], str]:
    """Each setting's heading: ``stream · backbone`` and the keys whose value differs between
    ``settings`` (short names, :func:`short_keys`): all of them for the first, marked
    ``(default)`` if it is, for the others those where they differ from the first; and, for a
    first that is not the default, a line saying so with the default's values."""
    values = [v for _, v, _ in settings]
    keys = [k for k in values[0] if k not in ("tasks", "backbone")
            and len({str(v.get(k)) for v in values}) > 1]
    short = short_keys(keys)
    heads = [" · ".join([str(v.get("tasks", "–")), str(v.get("backbone", "–"))]
                        + [f"{short[k]}={v.get(k)}" for k in keys
                           if not i or str(v.get(k)) != str(values[0].get(k))])
             for i, v in enumerate(values)]
    lead = ""
    if exact:
        heads[0] += " (default)"
    elif default and heads:
        off = [f"{short.get(k, k)}={default[k]}" for k, v in values[0].items()
               if k in default and str(v) != str(default[k])]
        lead = (f"The setting closest to the default: no setting here is conf/'s default "
                f"({', '.join(off)}).")
    return heads, lead
