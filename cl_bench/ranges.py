"""Value ranges of the group keys, declared on the constructors' signatures.

A group option's keys (``strategy.lr``, ``tasks.n_train``, ``backbone.rank`` ...) are the keyword
arguments of its ``_target_``; their types *and ranges* are the annotations of that signature,
written with the ``annotated-types`` library (the constraint vocabulary pydantic uses) and these
aliases, e.g. ``lr: PositiveFloat = 1e-3``. :func:`cl_bench.config.check_node` reads them and
refuses a value out of range with one line naming the key, before anything is built; a float key
is always refused NaN or infinity. ``typing.Literal`` declares a choice.

Example::

    def __init__(self, alpha: NonNegativeFloat = 1.0, reduction: Literal["sum", "mean"] = "sum")
"""

from __future__ import annotations

from typing import Annotated

import annotated_types as at

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
