"""A search space from Hydra's sweep overrides, as Optuna distributions.

The grammar is Hydra's own (``interval``, ``range``, choices, ``tag(log, ...)``), as the
``hydra-optuna-sweeper`` plugin reads it (facebookresearch/hydra, ``plugins/hydra_optuna_sweeper``,
``create_optuna_distribution_from_override``): the same command lines search the same spaces.
Deviations: the plugin's ``range(a, b, s)`` includes ``b`` (it becomes a discrete uniform over
``[a, b]``); here it means what it means in every other Hydra sweep, ``a, a+s, ..., < b``; and
Optuna 3+'s ``FloatDistribution`` / ``IntDistribution`` replace the deprecated classes.

* ``key=interval(a, b)``: a float (or, with two ints, an int) uniform on ``[a, b]``;
* ``key=tag(log, interval(a, b))``: the same, log-uniform (``a > 0``);
* ``key=range(a, b[, s])``: ints (floats if any bound is a float) ``a, a+s, ... < b``;
* ``key=x,y,z`` / ``key=choice(x, y)``: categorical (``strategy=ewc,lwf`` too);
* ``key=value``: a fixed value, passed to every trial unchanged.
"""

from __future__ import annotations

from typing import Any

from cl_bench.errors import ConfigError


def distribution(override, text: str = "") -> Any:
    """The Optuna distribution of one parsed sweep override, or its fixed value (a string).

    Args:
        override: a ``hydra.core.override_parser.types.Override``.
        text: the override as written (for messages).

    Raises:
        ConfigError: an empty or reversed interval or range, a log interval not above 0, a
            choice value of a type Optuna cannot store; the message names the override.
    """
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    text = text or override.get_key_element()
    value = override.value()
    try:
        if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            bad = [c for c in choices if not isinstance(c, (str, int, float, bool, type(None)))]
            if bad:
                raise ValueError(f"a choice must be a string, number, bool or null, got {bad[0]!r}")
            if not choices:
                raise ValueError("no choice")
            return CategoricalDistribution(choices)
        if override.is_range_sweep():
            assert isinstance(value, RangeSweep)
            values = list(override.sweep_iterator())
            if not values:
                raise ValueError(f"the range is empty (start {value.start}, stop {value.stop}, "
                                 f"step {value.step})")
            step = value.step if value.step is not None else 1
            if step <= 0:
                raise ValueError(f"step {step} is not > 0")
            if all(isinstance(v, int) for v in (value.start, value.stop, step)):
                return IntDistribution(int(values[0]), int(values[-1]), step=int(step))
            return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
        assert isinstance(value, IntervalSweep)
        low, high, log = value.start, value.end, "log" in value.tags
        if low > high:
            raise ValueError(f"low {low} > high {high}")
        if log and low <= 0:
            raise ValueError(f"a log interval needs low > 0, got {low}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    except ValueError as e:
        raise ConfigError(f"{text}: bad search space: {e}") from None


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split sweep overrides into Optuna distributions and fixed values.

    Args:
        arguments: override strings (``hydra.sweeper.params`` items, then the command line).

    Returns:
        ``(distributions, fixed)``: ``{key: BaseDistribution}`` and ``{key: value string}``; a key
        given twice keeps its last form (the command line overrides ``params``).

    Raises:
        ConfigError: a bad interval, range or choice (:func:`distribution`), or an override
            that does not parse (naming it).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    dists: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for arg in arguments:
        try:
            (override,) = parser.parse_overrides([arg])
        except OverrideParseException as e:
            raise ConfigError(f"{arg}: cannot parse this search override "
                              f"({str(e).splitlines()[0]})") from None
        key = override.get_key_element()
        found = distribution(override, arg)
        dists.pop(key, None)
        fixed.pop(key, None)
        if isinstance(found, str):
            fixed[key] = found
        else:
            dists[key] = found
    return dists, fixed


def representative(dist: Any) -> Any:
    """A value inside ``dist`` (its low end, or its first choice): used to compose and check
    one trial's config before the search starts."""
    choices = getattr(dist, "choices", None)
    return choices[0] if choices is not None else dist.low


def override_text(key: str, value: Any) -> str:
    """``key=value`` as a Hydra override (``null`` for None, lower-case booleans, floats by
    ``repr`` so nothing is rounded)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
