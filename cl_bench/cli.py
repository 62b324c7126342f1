"""``clbench``: the Hydra entry point. Nothing else lives here."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

import cl_bench.config  # noqa: F401  (registers the config schema)
from cl_bench.composition import CONF_DIR, composition_error_line
from cl_bench.errors import ClBenchError, Interrupted, RunDirBusy
from cl_bench.signals import SweepStopped

log = logging.getLogger("cl_bench")


def _help() -> str:
    """``hydra.help.template``: generated from conf/ (:mod:`cl_bench.helptext`)."""
    from cl_bench.helptext import help_template

    return help_template(CONF_DIR)


OmegaConf.register_new_resolver("clbench_help", _help, replace=True)


def _adopt_saved_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """``clbench resume=<dir> [key=value ...]``: the config the run was started with, with
    the command line's overrides on top.

    ``resume=<dir>`` alone continues the run's own config (with this command's run-local keys:
    ``hardware.num_threads``, ``train.progress_bar``, ...). An override of a key that decides
    the results (``train.max_steps=50``) is applied to the run's config, not to the defaults,
    so the runner's check (:func:`cl_bench.checkpoint.claim_run_dir`) refuses the resume naming
    just the keys the command line changed; restating the run's own values resumes. A preset
    (``experiment=...``) or a group given with a package (``a@b=...``) may change any key: then
    the command line's whole config is compared, as composed.

    Args:
        cfg: the config composed from the command line.
        run_dir: the run directory being resumed.

    Returns:
        the config to run.

    Raises:
        ConfigError: the run's ``checkpoints/config.yaml`` cannot be read.
    """
    from cl_bench.checkpoint import saved_config
    from cl_bench.config import RUN_LOCAL_KEYS

    saved = saved_config(run_dir)
    if saved is None:
        return cfg
    keys = [o.split("=", 1)[0] for o in HydraConfig.get().overrides.task]
    if any(k.lstrip("+~").split(".")[0] == "experiment" or "@" in k or "/" in k for k in keys):
        return cfg  # a preset or a packaged group: the composed config as a whole
    merged = OmegaConf.merge(saved, {k: v for k, v in cfg.items() if k in RUN_LOCAL_KEYS})
    with open_dict(merged):
        for key in ("train.progress_bar", "hardware.num_threads"):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
        for key in keys:
            name = key.lstrip("+~")
            if key.startswith("~"):
                parent, _, leaf = name.rpartition(".")
                node = OmegaConf.select(merged, parent) if parent else merged
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
            elif name.split(".")[0] not in ("resume",):
                OmegaConf.update(merged, name, OmegaConf.select(cfg, name), merge=False)
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


#: True while :func:`console` has the garbage collector paused for the runner's imports
_gc_paused = False
#: the arguments as the user typed them, set by :func:`main` (a stopped sweep's continuation
#: command); ``None`` in a process :func:`main` did not start (a SLURM job running one job)
_command: list[str] | None = None
#: ``(sweep dir, job dir)`` of the last multirun job started in this process
_sweep_job: tuple[str, str] | None = None


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
    if "--version" in sys.argv[1:]:  # Hydra's flag would print Hydra's version
        print(version_line())
        return
    from cl_bench.config import spell_stream_keys

    global _command, _sweep_job
    _command, _sweep_job = list(sys.argv[1:]), None

    sys.argv[1:] = spell_stream_keys(sys.argv[1:], CONF_DIR)  # tasks.max_tasks=1 as --help has it
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
        print(f"clbench: {'stopped' if isinstance(ex, Interrupted) else 'error'}: {ex}",
              file=sys.stderr)
        sys.exit(ex.exit_code if isinstance(ex, Interrupted) else 2)
    except OmegaConfBaseException as ex:  # our resolvers' errors (e.g. clbench_run_dir's)
        cause = _clbench_cause(ex)
        if cause is None or user_asked_full:
            raise
        print(f"clbench: error: {cause}", file=sys.stderr)
        sys.exit(2)
    except SweepStopped as ex:  # a sweep's job stopped: the whole sweep stops, one line
        print(f"clbench: stopped: {sweep_stop_line(ex.error, ex.job_dir, ex.sweep_dir)}",
              file=sys.stderr)
        sys.exit(ex.exit_code)
    except KeyboardInterrupt:  # outside a run's stream (imports, composition, a job's start)
        if _sweep_job is not None:  # a sweep was under way: what it wrote is kept
            print(f"clbench: stopped: {sweep_stop_line(None, *reversed(_sweep_job))}",
                  file=sys.stderr)
        else:
            print("clbench: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)


def sweep_stop_line(error: Exception | None, job_dir: str, sweep_dir: str) -> str:
    """The one line a stopped sweep prints: where it stopped and the command that continues
    the whole sweep, the user's own command with ``hydra.sweep.dir=<its directory>``.

    Run again in the same directory, every job finds its run directory: a finished run is
    not trained again (:func:`cl_bench.checkpoint.claim_run_dir` resumes it with all its
    tasks done), the stopped run continues from its checkpoints, the jobs not yet started run;
    a search (``hydra/sweeper=optuna``) continues its study from the same directory.

    Args:
        error: the stopped job's :class:`~cl_bench.errors.Interrupted`, or ``None`` for a
            Ctrl-C outside a run's stream.
        job_dir: the run directory of the job that was running.
        sweep_dir: ``hydra.sweep.dir``.

    Returns:
        the line, without the ``clbench: stopped:`` prefix.
    """
    found = re.match(r"interrupted by (\S+) after (\d+/\d+) tasks", str(error or ""))
    how = (f"interrupted by {found.group(1)} after {found.group(2)} tasks of sweep job "
           f"{Path(job_dir).name}" if found else f"interrupted by Ctrl-C in sweep job "
           f"{Path(job_dir).name}")
    args = [a for a in (_command or []) if not a.lstrip("+").startswith("hydra.sweep.dir=")]
    command = shlex.join(["clbench", *args, f"hydra.sweep.dir={os.path.abspath(sweep_dir)}"])
    return (f"{how}; continue the whole sweep (finished runs are kept, the stopped one "
            f"resumes from its checkpoints) with: {command}")


def version_line() -> str:
    """``clbench --version``: ``"clbench 0.1.0 (Hydra 1.3.8)"``, the installed distribution's
    version (:func:`importlib.metadata.version`; ``unknown`` where cl_bench is not installed).

    Returns:
        the line.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("cl_bench")
    except PackageNotFoundError:
        mine = "unknown"
    return f"clbench {mine} (Hydra {hydra.__version__})"


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

    global _sweep_job
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    if hc.mode == RunMode.MULTIRUN:
        _sweep_job = (str(hc.sweep.dir), run_dir)
    try:
        if cfg.get("resume"):
            cfg = _adopt_saved_config(cfg, Path(run_dir))
        out = run(cfg, run_dir)
        value = _objective(cfg, out.metrics)
    except ClBenchError as e:
        # a sweep's job stopped by Ctrl-C / SIGTERM in the launching process: the sweep stops
        # too, and the command line prints one line (sweep_stop_line), not this job's advice
        stop_sweep = (hc.mode == RunMode.MULTIRUN and isinstance(e, Interrupted)
                      and _command is not None)
        if not stop_sweep:
            print(f"clbench: {'stopped' if isinstance(e, Interrupted) else 'error'}: {e}",
                  file=sys.stderr)
        if hc.mode != RunMode.MULTIRUN and not cfg.get("resume"):
            _discard_unused_run_dir(Path(run_dir), Path(str(cfg.get("results_dir") or ".")))
        if ((Path(run_dir) / "matrix.csv").exists() and not isinstance(e, RunDirBusy)
                and not stop_sweep):
            if hc.mode != RunMode.MULTIRUN:
                log.info("\n%s", run_summary(run_dir))
            print(f"clbench: completed rows are kept in {run_dir}/matrix.csv", file=sys.stderr)
        if stop_sweep:
            raise SweepStopped(e, run_dir, str(hc.sweep.dir)) from None
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
