"""``clbench``: the Hydra entry point. Nothing else lives here."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

import cl_bench.config  # noqa: F401  (registers the config schema)
from cl_bench.errors import ClBenchError, Interrupted, RunDirBusy

log = logging.getLogger("cl_bench")
#: the repository's conf/ (source checkout, editable install) or, in an installed wheel, the copy
#: shipped as cl_bench/conf (pyproject maps conf/ there); absolute, so every entry point agrees
_REPO_CONF = Path(__file__).resolve().parent.parent / "conf"
CONF_DIR = str(_REPO_CONF if (_REPO_CONF / "config.yaml").is_file()
               else Path(__file__).resolve().parent / "conf")


def _help() -> str:
    """``hydra.help.template``: generated from conf/ (:mod:`cl_bench.helptext`)."""
    from cl_bench.helptext import help_template

    return help_template(CONF_DIR)


OmegaConf.register_new_resolver("clbench_help", _help, replace=True)


def _adopt_saved_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """``clbench resume=<dir>`` alone: continue with the config the run was started with."""
    from cl_bench.checkpoint import saved_config
    from cl_bench.config import RUN_LOCAL_KEYS

    overrides = HydraConfig.get().overrides.task
    if any(o.split("=", 1)[0].lstrip("+~") not in RUN_LOCAL_KEYS for o in overrides):
        return cfg  # the user restated a config: the runner checks it matches the run's
    saved = saved_config(run_dir)
    if saved is None:
        return cfg
    merged = OmegaConf.merge(saved, {k: v for k, v in cfg.items() if k in RUN_LOCAL_KEYS})
    with open_dict(merged):
        for key in ("train.progress_bar", "hardware.num_threads"):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def _check_resume_argument(argv: list[str]) -> None:
    """``resume=<dir>`` must name a run directory; checked before Hydra creates any directory.

    Raises:
        SystemExit(2): with one line naming the directory.
    """
    for arg in argv:
        if arg.startswith("resume=") and arg[len("resume="):] not in ("", "null", "None"):
            path = Path(arg[len("resume="):])
            if not (path / "checkpoints" / "config.yaml").is_file():
                print(f"clbench: error: resume={path}: not a cl_bench run directory (no "
                      f"{path / 'checkpoints' / 'config.yaml'}); pass the directory of a run",
                      file=sys.stderr)
                sys.exit(2)


def composition_error_line(ex: Exception, argv: list[str]) -> str:
    """One line naming the culprit of a Hydra composition error (an unknown group option, an
    unknown key, a value the schema cannot convert, an override that does not parse)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
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
        return f"{key}: unknown key" + (f"; valid keys: {', '.join(map(str, valid))}" if valid
                                         else "")
    reason = str(cause).strip().splitlines()[0]
    return f"{key}: {reason[:1].lower()}{reason[1:]}"


#: True while :func:`console` has the garbage collector paused for the runner's imports
_gc_paused = False


def console() -> None:
    """The ``clbench`` command (console script and ``python -m cl_bench.cli``): :func:`main`
    with the garbage collection of a short-lived command-line process.

    Importing the runner (torch, MONAI, torchmetrics, Lightning: ~560,000 objects) triggers
    about eight full collections of Python's cyclic garbage collector, ~0.8 s of a 5 s start-up,
    and the interpreter's collections at exit walk the same objects again (~1 s). So the
    collector is paused until the imports are done, the imported objects are then moved to its
    permanent generation (:func:`gc.freeze`; they live as long as the process anyway) and the
    collector resumes; at exit everything is frozen before the interpreter's final collections.
    This is the start-up recipe of the :mod:`gc` documentation (``gc.disable`` early,
    ``gc.freeze`` once the long-lived objects exist). Only the command does this: code that calls
    :func:`main` in its own process (tests, notebooks) keeps its collector as it is.
    """
    global _gc_paused
    atexit.register(gc.freeze)  # runs before the interpreter's own final collections
    if gc.isenabled():
        gc.disable()
        _gc_paused = True
    try:
        main()
    finally:
        _resume_gc()


def _resume_gc() -> None:
    """End :func:`console`'s pause: freeze what exists (the imported modules), collect again."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def main() -> None:
    """Console entry point ``clbench`` (Hydra command line).

    A config the command line cannot compose (an unknown option or key, a value of the wrong
    type) exits with code 2 and one line naming it, like the errors of a run; Hydra raises it to
    us through its documented ``HYDRA_FULL_ERROR`` switch. A user who set that variable gets
    Hydra's full trace as usual.
    """
    if sys.argv[1:2] == ["ls"]:  # clbench ls [DIR]: the runs under DIR (cl_bench.runs_list)
        from cl_bench.config import RUN_LOCAL_KEYS
        from cl_bench.runs_list import main as list_runs

        sys.exit(list_runs(sys.argv[2:], hidden=RUN_LOCAL_KEYS))
    if sys.argv[1:] in (["--help"], ["-h"]):  # the same text Hydra prints, without composing
        from string import Template

        print(Template(_help()).safe_substitute())
        return
    _check_resume_argument(sys.argv[1:])
    _register_sweeper()
    user_asked_full = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        _main()
    except HydraException as ex:
        if user_asked_full:
            raise
        print(f"clbench: error: {composition_error_line(ex, sys.argv[1:])}", file=sys.stderr)
        sys.exit(2)
    except ClBenchError as ex:  # a multirun job's error, re-raised by Hydra after the sweep
        if user_asked_full:
            raise
        print(f"clbench: error: {ex}", file=sys.stderr)
        sys.exit(ex.exit_code if isinstance(ex, Interrupted) else 2)
    except OmegaConfBaseException as ex:  # our resolvers' errors (e.g. clbench_run_dir's)
        cause = _clbench_cause(ex)
        if cause is None or user_asked_full:
            raise
        print(f"clbench: error: {cause}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before a run started (imports, composition): nothing written
        print("clbench: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)


def _register_sweeper() -> None:
    """Register ``hydra/sweeper=optuna``'s plugin class with Hydra by hand: Hydra finds plugins
    by walking the ``hydra_plugins`` namespace's directories, and an editable install (setuptools'
    import-hook finder) hides ours from that walk; a wheel install is found either way."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.clbench_optuna_sweeper.optuna_sweeper import ClBenchOptunaSweeper

    Plugins.instance().register(ClBenchOptunaSweeper)


def _clbench_cause(ex: BaseException) -> ClBenchError | None:
    """The :class:`ClBenchError` that ``ex`` wraps (its ``__cause__`` / ``__context__``
    chain), or ``None``."""
    seen = set()
    while ex is not None and id(ex) not in seen:
        if isinstance(ex, ClBenchError):
            return ex
        seen.add(id(ex))
        ex = ex.__cause__ or ex.__context__
    return None


def quiet_libraries() -> None:
    """The library messages a clbench run does not show (set by the command line, in every
    process a launcher starts, never by importing the runner), each for the reason given."""
    # Lightning's banner lines ("GPU available: False", tips) are noise in a stream of many Trainers
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The `srun` command is available.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # resumed mid-task
    # Lightning's ModelCheckpoint under manual optimisation (lora & co.) warns at every mid-task save
    # that the checkpoint holds the weights *after* the step's optimiser update, with a 12-line code
    # sample. That is the state we want: the checkpoint's global_step counts that update, and resume
    # continues from the next batch bit-identically (tests/test_resume.py).
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    """Run one experiment; user errors print one line and exit with code 2.

    In a sweep (``-m``) the error is raised instead of exiting, so the launcher marks this job
    failed and the other sweep points still run (each has its own directory).

    Returns:
        a search trial's objective value (:func:`_objective`; the sweeper reads it from Hydra's
        ``JobReturn``), else ``None``.
    """
    # before the runner's imports (torchmetrics imports matplotlib): a fresh install's first
    # import builds matplotlib's font cache and logs "generated new fontManager" at INFO
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from cl_bench.runner import run
    from cl_bench.summary import job_line, run_summary

    _resume_gc()  # the runner's imports are done (see console)
    quiet_libraries()

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    try:
        if cfg.get("resume"):
            cfg = _adopt_saved_config(cfg, Path(run_dir))
        out = run(cfg, run_dir)
        value = _objective(cfg, out.metrics)
    except ClBenchError as e:
        print(f"clbench: {'stopped' if isinstance(e, Interrupted) else 'error'}: {e}",
              file=sys.stderr)
        if hc.mode != RunMode.MULTIRUN and not cfg.get("resume"):
            _discard_unused_run_dir(Path(run_dir), Path(str(cfg.get("results_dir") or ".")))
        if (Path(run_dir) / "matrix.csv").exists() and not isinstance(e, RunDirBusy):
            if hc.mode != RunMode.MULTIRUN:
                log.info("\n%s", run_summary(run_dir))
            print(f"clbench: completed rows are kept in {run_dir}/matrix.csv", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:
            raise
        sys.exit(e.exit_code if isinstance(e, Interrupted) else 2)
    if hc.mode == RunMode.MULTIRUN:  # the terminal gets one line per job, cli.log the summary
        log.info("%s", job_line(run_dir))
        _log_to_file_only("\n" + run_summary(run_dir))
    else:
        log.info("\n%s", run_summary(run_dir))
    return value


def _objective(cfg: DictConfig, metrics: dict) -> float | None:
    """A search trial's (``search.trial`` set) objective value, what the sweeper reads from
    the job's return (:mod:`cl_bench.search`); ``None`` for any other run.

    Raises:
        ClBenchError: the objective cannot be read from the run's validation R.
    """
    if cfg.get("search") is None or cfg.search.get("trial") is None:
        return None
    from cl_bench.search.objective import parse_objective

    value = parse_objective(cfg.search.objective).value(metrics)
    log.info("search trial %s: %s = %.6g", cfg.search.trial, cfg.search.objective, value)
    return value


#: what Hydra puts in a run directory before cl_bench runs (its config record and the log file)
_HYDRA_ONLY = {".hydra", "cli.log"}


def _discard_unused_run_dir(run_dir: Path, results_dir: Path) -> None:
    """A run refused before it wrote anything leaves no directory behind: remove ``run_dir`` if
    it holds only what Hydra made (``.hydra/``, ``cli.log``; the error went to stderr), then its
    parents up to and including ``results_dir`` while they are empty."""
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= _HYDRA_ONLY:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    stop = results_dir.resolve()
    parent = run_dir.resolve().parent
    while (parent == stop or stop in parent.parents) and not any(parent.iterdir()):
        parent.rmdir()
        if parent == stop:
            break
        parent = parent.parent


def _log_to_file_only(text: str) -> None:
    """Write ``text`` through the job's log-file handlers (``cli.log``), not the console."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    console()
