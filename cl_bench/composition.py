"""Where ``clbench``'s config is composed from (:data:`CONF_DIR`) and the one line a failed
composition prints (:func:`composition_error_line`). Shared by every entry point that composes
the config: ``clbench`` (:mod:`cl_bench.cli`), ``clbench-probe``, ``clbench-best`` and the
Optuna sweeper's preflight (:mod:`cl_bench.search.sweeper`).

Floor 1 (docs/architecture.md §2): it reads :mod:`cl_bench.config` only, so the entry points
(floor 6) and the sweeper that Hydra's plugin wraps import it without importing each other.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf.errors import ConfigAttributeError, ConfigKeyError

#: the repository's conf/ (source checkout, editable install) or, in an installed wheel, the copy
#: shipped as cl_bench/conf (pyproject maps conf/ there); absolute, so every entry point agrees
_REPO_CONF = Path(__file__).resolve().parent.parent / "conf"
CONF_DIR = str(_REPO_CONF if (_REPO_CONF / "config.yaml").is_file()
               else Path(__file__).resolve().parent / "conf")


def composition_error_line(ex: Exception, argv: list[str]) -> str:
    """One line naming the culprit of a Hydra composition error (an unknown group option, an
    unknown key, a value the schema cannot convert, an override that does not parse, several
    values without ``--multirun``).

    Args:
        ex: the exception Hydra raised.
        argv: the command line's arguments.

    Returns:
        the line, without the ``clbench: error:`` prefix.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    from cl_bench.config import did_you_mean

    first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
    ambiguous = re.match(r"Ambiguous value for argument '(.*)'$", first)
    if ambiguous:  # Hydra's three hints, on one line, the sweep first
        arg = ambiguous.group(1)
        key, _, value = arg.partition("=")
        return (f"{arg}: several values outside a sweep; to sweep over them, add --multirun "
                f"(-m) to your command line; for a list write {key}=[{value}], for one string "
                f"quote it: {key}=\\'{value}\\'")
    if isinstance(ex, MissingConfigException):
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(ex))
        if found and ex.options:
            group, option = found.groups()
            return (f"{group}={option}: no such option in conf/{group}; options: "
                    f"{', '.join(ex.options)}")
        return first
    if isinstance(ex, OverrideParseException):
        parser = OverridesParser.create()
        for arg in argv:
            try:
                parser.parse_overrides([arg])
            except OverrideParseException as bad:
                return f"{arg}: cannot parse this override ({str(bad).splitlines()[0]})"
        return first
    cause = ex.__cause__
    key = getattr(cause, "full_key", None)
    if not key:
        return first
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        parent = getattr(cause, "parent_node", None)
        valid = [k for k in (parent.keys() if parent is not None else [])
                 if not str(k).startswith("_") and k != "hydra"]
        return f"{key}: unknown key" + (f"; valid keys: {', '.join(map(str, valid))}"
                                         f"{did_you_mean(key, valid)}" if valid else "")
    reason = str(cause).strip().splitlines()[0]
    return f"{key}: {reason[:1].lower()}{reason[1:]}"
