"""Value ranges of the group keys, declared on the constructors' signatures, and their check.

A group option's keys (``strategy.lr``, ``tasks.n_train``, ``backbone.rank`` ...) are the keyword
arguments of its ``_target_``; their types *and ranges* are the annotations of that signature,
written with the ``annotated-types`` library (the constraint vocabulary pydantic uses) and these
aliases, e.g. ``lr: PositiveFloat = 1e-3``. ``typing.Literal`` declares a choice,
``annotated_types.MinLen`` / ``MaxLen`` / ``Len`` a list's length (``NonEmptyStrList``),
``annotated_types.MultipleOf`` a step, ``annotated_types.Predicate`` any other test of one value
(with an ``annotated_types.Doc`` beside it stating what it accepts, as :data:`NonBlankStr`).
A float is always refused NaN or infinity, an int (and a float) always refused a bool.

The annotation is the only place a range is written. Two checks read it, with one message:

* :func:`cl_bench.config.check_node` checks a Hydra node against its target's signature before
  anything is built;
* :func:`checked` wraps a constructor or factory so that a direct Python call
  (``LoRA(rank=0)``) is checked the same way (every :class:`~cl_bench.strategies.base.Strategy`
  subclass's ``__init__`` is wrapped automatically), and :func:`check_value` checks one value
  where no signature carries it (a helper's argument).

Either raises ``ConfigError("<group>.<key>: expected <description>, got <value!r> (<type>)")``,
e.g. ``strategy.rank: expected an int > 0, got 0 (int)``. Rules that relate several arguments
(``scale_min <= scale_max``), depend on the model (a rank above a layer's width) or on files stay
hand-written where they apply.

Example::

    @checked("tasks")
    def make_stream(n: PositiveInt = 3, reduction: Literal["sum", "mean"] = "sum",
                    names: NonEmptyStrList = ("a",)) -> list: ...

This module imports nothing of ``cl_bench`` but :mod:`cl_bench.errors` (``cl_bench.config``
imports it, not the reverse).
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from typing import Annotated, Any, Callable, Literal

import annotated_types as at
from omegaconf import ListConfig

from cl_bench.errors import ConfigError

PositiveInt = Annotated[int, at.Gt(0)]
NonNegativeInt = Annotated[int, at.Ge(0)]
PositiveFloat = Annotated[float, at.Gt(0)]
NonNegativeFloat = Annotated[float, at.Ge(0)]
#: a share in [0, 1]
Fraction = Annotated[float, at.Interval(ge=0, le=1)]
#: a share in [0, 1)
OpenFraction = Annotated[float, at.Interval(ge=0, lt=1)]
#: a share in (0, 1] (an energy threshold, a decay factor)
PositiveFraction = Annotated[float, at.Interval(gt=0, le=1)]
#: a percentage in (0, 100]
Percent = Annotated[float, at.Interval(gt=0, le=100)]
#: an int >= 2 (e.g. classes per task: one class is no classification task)
AtLeastTwo = Annotated[int, at.Ge(2)]
#: a list of at least one string (e.g. module names)
NonEmptyStrList = Annotated[list[str], at.MinLen(1)]
#: a string that is not empty or only whitespace (e.g. a path)
NonBlankStr = Annotated[str, at.Predicate(str.strip), at.Doc("a non-blank string")]

#: annotated-types bounds -> (test, how a message states it)
_BOUNDS = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
           "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}


def bounds_of(meta: tuple) -> list[tuple[str, Any]]:
    """``Annotated`` metadata -> ``[(bound name, bound value)]`` (Gt, Ge, Lt, Le, Interval)."""
    out = []
    for m in meta:
        for attr in _BOUNDS:
            if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le, at.Interval)) and \
                    getattr(m, attr, None) is not None:
                out.append((attr, getattr(m, attr)))
    return out


def _multiples(meta: tuple) -> list[Any]:
    """``Annotated`` metadata -> the ``MultipleOf`` steps it declares."""
    return [m.multiple_of for m in meta if isinstance(m, at.MultipleOf)]


def _lengths(meta: tuple) -> tuple[int, int | None]:
    """``Annotated`` metadata -> ``(min length, max length or None)`` (MinLen, MaxLen, Len)."""
    low, high = 0, None
    for m in meta:
        if isinstance(m, (at.MinLen, at.Len)):
            low = max(low, m.min_length)
        if isinstance(m, (at.MaxLen, at.Len)) and m.max_length is not None:
            high = m.max_length if high is None else min(high, m.max_length)
    return low, high


def _predicates(meta: tuple) -> list[Callable[[Any], Any]]:
    """``Annotated`` metadata -> the tests of its ``Predicate`` entries."""
    return [m.func for m in meta if isinstance(m, at.Predicate)]


def _doc(meta: tuple) -> str | None:
    """``Annotated`` metadata -> the description its ``Doc`` gives, if any."""
    return next((m.documentation for m in meta if isinstance(m, at.Doc)), None)


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a plain config value fits a (simple) type annotation, including the ranges of
    ``Annotated[..., annotated_types.Gt(0)]`` (bounds, lengths, predicates) and ``Literal``
    choices.
    A float is never NaN or infinite; a bool is no int. Types it cannot judge (a tensor, a
    dict, a class) pass."""
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        if not _type_ok(value, base):
            return False
        low, high = _lengths(tuple(meta))
        if (low or high is not None) and not (low <= len(value) and
                                              (high is None or len(value) <= high)):
            return False
        if any(value % step for step in _multiples(tuple(meta))):
            return False
        if not all(test(value) for test in _predicates(tuple(meta))):
            return False
        return all(_BOUNDS[name][0](value, bound) for name, bound in bounds_of(tuple(meta)))
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_type_ok(v, args[0]) for v in value)
    return True


_ARTICLES = {float: "a finite float", int: "an int", str: "a string", bool: "a bool"}


def _describe(hint: Any) -> str:
    """How an error message states a type annotation: ``a finite float > 0``,
    ``one of 'sum', 'mean'``, ``an int > 0 or None``, ``a non-empty list of a string``; an
    ``Annotated`` hint with an ``annotated_types.Doc`` is stated by that text."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        if _doc(tuple(meta)) is not None:
            return _doc(tuple(meta))
        text = _describe(base)
        low, high = _lengths(tuple(meta))
        if low == 1 and high is None and text.startswith("a "):
            text = "a non-empty " + text[2:]
        elif low == high:
            text += f" of exactly {low} items"
        elif low or high is not None:
            text += f" of {low} to {high} items" if high is not None else f" of >= {low} items"
        bounds = [f"{_BOUNDS[n][1]} {b}" for n, b in bounds_of(tuple(meta))]
        bounds += [f"a multiple of {step}" for step in _multiples(tuple(meta))]
        return f"{text} {' and '.join(bounds)}".strip()
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint in _ARTICLES:
        return _ARTICLES[hint]
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def type_hints(fn: Callable) -> dict[str, Any]:
    """The resolved annotations of ``fn``'s parameters, with their ``Annotated`` ranges. Where
    the whole set cannot be resolved (a third-party signature naming a type only imported under
    ``TYPE_CHECKING``, e.g. wandb's ``Run``), each parameter is resolved on its own and the
    unresolvable ones are left out."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    out = {}
    namespace = dict(getattr(inspect.unwrap(fn), "__globals__", {}))
    for name, p in inspect.signature(fn).parameters.items():
        ann = p.annotation
        if ann is inspect.Parameter.empty:
            continue
        try:
            out[name] = eval(ann, namespace) if isinstance(ann, str) else ann
        except Exception:
            continue
    return out


def check_value(key: str, value: Any, hint: Any) -> None:
    """Check one value against an annotation.

    Args:
        key: the config key named in the message, e.g. ``"strategy.rank"``.
        value: the value given.
        hint: its annotation, e.g. :data:`PositiveInt` or ``Literal["a", "b"]``.

    Raises:
        ConfigError: ``<key>: expected <description>, got <value!r> (<type>)``.
    """
    if not _type_ok(value, hint):
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r} "
                          f"({type(value).__name__})")


def checked(group: str, keys: dict[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: check every argument a call passes against its parameter's annotation
    (:func:`check_value`) before the wrapped constructor or factory runs.

    Args:
        group: the config group the arguments belong to (``strategy``, ``tasks``, ``backbone``);
            messages name ``<group>.<parameter>``.
        keys: parameters whose config key is not their own name, e.g.
            ``{"norm": "regression_norm"}`` (messages then name ``<group>.regression_norm``).

    The wrapper keeps the signature and annotations (``functools.wraps``), so
    :func:`cl_bench.config.check_node` reads the same ones; arguments left at their default are
    not checked. Annotations are resolved at the first call (they may name later definitions).

    Raises (from the wrapped callable):
        ConfigError: the first argument out of its declared type or range, naming
            ``<group>.<key>``.
    """
    keys = keys or {}

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints: dict[str, Any] | None = None

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            nonlocal hints
            if hints is None:
                hints = type_hints(fn)
            for name, value in sig.bind(*args, **kwargs).arguments.items():
                kind = sig.parameters[name].kind
                if name in hints and kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                  inspect.Parameter.VAR_KEYWORD):
                    check_value(f"{group}.{keys.get(name, name)}", value, hints[name])
            return fn(*args, **kwargs)

        wrapper.__checked__ = group
        return wrapper

    return wrap
