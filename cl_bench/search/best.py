"""``clbench-best <sweep dir> seed=0,1,2``: a search's best config on the test split, over seeds.

    clbench -m hydra/sweeper=optuna tasks=split_mnist tasks.n_val=100 strategy=ewc \\
        'strategy.lr=tag(log,interval(1e-4,1e-2))' hydra.sweep.dir=sweeps/ewc
    clbench-best sweeps/ewc seed=0,1,2

reads the best complete trial from the study (:func:`best_overrides`; the study itself, so a
search that was killed before writing ``optimization_results.yaml`` works too), runs
``clbench -m <best overrides> <extra overrides> hydra.sweep.dir=<sweep dir>/best`` as a plain
Hydra multirun (no ``hydra/sweeper=optuna``, no ``search.trial``: every run measures R on the
test split, which the search never read), then prints the ``clbench-report`` table of those runs
(mean ± std over seeds of the final-row metrics) and writes the full report to
``<sweep dir>/best/report``.

``tasks.n_val`` stays as it was searched: the validation samples are still carved from each
task's training set, so the runs train on exactly the training set the hyperparameters were
chosen for (their ``metrics.json`` also records the validation R, next to the test R).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from cl_bench.errors import ClBenchError

PROG = "clbench-best"
#: where the runs go, in the sweep directory (unless the extra overrides set hydra.sweep.dir)
BEST_DIR = "best"
USAGE = f"""usage: {PROG} SWEEP_DIR [OVERRIDE ...]

Run the best trial of a hyperparameter search (clbench -m hydra/sweeper=optuna ...) on the
TEST split, as a Hydra multirun over the extra overrides, and print the mean ± std table of the
runs (clbench-report's).

  SWEEP_DIR   the search's hydra.sweep.dir (holds optuna_journal.log / optimization_results.yaml)
  OVERRIDE    extra overrides for every run, e.g. seed=0,1,2 (a sweep: one run per value);
              they replace the best config's value of the same key

The runs go to SWEEP_DIR/{BEST_DIR} (or the hydra.sweep.dir you give), the report to
SWEEP_DIR/{BEST_DIR}/report. tasks.n_val stays as searched, so the runs train on the training set
the hyperparameters were chosen for. Exit codes: 0 done, 2 a user mistake (one line), else
clbench's.

example: {PROG} results/multirun/2026-12-03_10-30-00 seed=0,1,2"""
#: hydra overrides of the search command line that belong to the search alone
_SEARCH_ONLY = ("hydra/sweeper", "hydra.sweeper", "hydra.sweep.dir", "hydra.mode")
#: report columns that are not final-row metrics (left out of the printed table, kept in the
#: written report)
_NOT_PRINTED = ("trainable %", "wall time (s)", "peak RSS (MB)", "peak GPU (MB)",
                "adapters % of backbone")


def _key(override: str) -> str:
    """An override's key (``+a.b=1`` -> ``a.b``; ``hydra/launcher=x`` -> ``hydra/launcher``)."""
    return override.split("=", 1)[0].lstrip("~+")


def _read_yaml(path: Path) -> DictConfig | None:
    """A YAML file of the sweep directory, or ``None`` if it is missing or unreadable."""
    try:
        cfg = OmegaConf.load(path) if path.is_file() else None
    except Exception:  # a half-written file: treated as absent
        return None
    return cfg if isinstance(cfg, DictConfig) else None


def _load_study(sweep_dir: str | Path) -> Any:
    """The Optuna study of the search in ``sweep_dir`` (read only;
    :func:`cl_bench.search.study.load_study`, the same reader as clbench-report's).

    Raises:
        ClBenchError: ``sweep_dir`` is not a directory, holds no search, or its study cannot be
            opened or told apart from others in the same storage (one line naming the
            directory).
    """
    from cl_bench.search.study import is_study_dir, load_study
    from cl_bench.search.sweeper import JOURNAL, RESULTS

    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ClBenchError(f"{sweep}: {'not a directory' if sweep.exists() else 'no such directory'}"
                           f"; pass the hydra.sweep.dir of a clbench -m hydra/sweeper=optuna search")
    if not is_study_dir(sweep):
        raise ClBenchError(f"{sweep}: not a search directory (no {JOURNAL}, no {RESULTS}); pass "
                           f"the hydra.sweep.dir of a clbench -m hydra/sweeper=optuna search")
    return load_study(sweep)


def _best_trial(sweep_dir: str | Path) -> tuple[Any, Any]:
    """``(study, its best complete trial)`` of the search in ``sweep_dir``.

    Raises:
        ClBenchError: as :func:`best_overrides`.
    """
    from optuna.trial import TrialState

    study = _load_study(sweep_dir)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
        counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) or "none"
        raise ClBenchError(f"{sweep_dir}: the search {study.study_name!r} has no complete trial "
                           f"(trials: {counts}); run or continue the search first")
    return study, study.best_trial


def best_overrides(sweep_dir: str | Path) -> list[str]:
    """The override strings of the best complete trial of the search in ``sweep_dir``: the
    search command line's fixed overrides plus the trial's searched values, without
    ``search.trial=`` (what ``optimization_results.yaml`` lists as ``best_overrides``).

    Reads the study (:func:`_load_study`; nothing is written) and takes the trial's overrides
    as the study report does (:func:`cl_bench.search.study.best_overrides`).

    Raises:
        ClBenchError: ``sweep_dir`` holds no search, or its study has no complete trial (one line
            naming the directory).
    """
    from cl_bench.search import study as report

    study, best = _best_trial(sweep_dir)
    return report.best_overrides(study, best, sweep_dir)


def search_hydra_overrides(sweep_dir: str | Path) -> list[str]:
    """The hydra overrides of the search's command line that a run of its best config keeps:
    ``hydra.overrides.hydra`` of ``<sweep_dir>/multirun.yaml`` (e.g. ``hydra/launcher=...``,
    ``hydra.launcher.*``) without the search's own (``hydra/sweeper``, ``hydra.sweeper.*``,
    ``hydra.sweep.dir``, ``hydra.mode``), then ``hydra/sweeper=basic`` (a preset such as
    ``experiment=split_mnist_tuned`` selects the Optuna sweeper itself). ``hardware=slurm`` is a
    task override, so it is already among :func:`best_overrides`. Reads ``multirun.yaml`` only.
    """
    master = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    listed = OmegaConf.select(master, "hydra.overrides.hydra", default=None) if master else None
    kept = [str(o) for o in (listed or [])
            if not any(_key(str(o)) == k or _key(str(o)).startswith(k + ".")
                       for k in _SEARCH_ONLY)]
    # Hydra's plain sweeper, even where a preset (experiment=split_mnist_tuned) selects optuna
    return kept + ["hydra/sweeper=basic"]


def _quote(path: str) -> str:
    """``path`` as an override value (quoted if Hydra's grammar needs it)."""
    if re.fullmatch(r"[\w./~:@+-]+", path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def best_command(sweep_dir: str | Path, extra: Sequence[str]) -> tuple[list[str], Path]:
    """The overrides of ``clbench -m`` that run the best config (after the ``-m``) and the
    directory its runs go to: :func:`best_overrides`, :func:`search_hydra_overrides`, then
    ``extra`` (which replaces any of them with the same key) and
    ``hydra.sweep.dir=<sweep_dir>/best`` (unless ``extra`` sets it).

    Reads the study and ``multirun.yaml``; writes nothing.

    Raises:
        ClBenchError: as :func:`best_overrides`; ``extra`` sets ``search.trial`` or
            ``hydra/sweeper`` (those would run a search trial, on validation samples).
    """
    extra = [str(e) for e in extra]
    for e in extra:
        if _key(e) == "search.trial" or _key(e).startswith(("hydra/sweeper", "hydra.sweeper")):
            raise ClBenchError(f"{e}: {PROG} runs the best config on the test split; leave "
                               f"search.trial and the sweeper out")
    given = {_key(e) for e in extra}
    base = best_overrides(sweep_dir) + search_hydra_overrides(sweep_dir)
    overrides = [o for o in base if _key(o) not in given] + extra
    out = next((e.split("=", 1)[1].strip("'\"") for e in reversed(extra)
                if _key(e) == "hydra.sweep.dir"), None)
    if out is None:
        out = str(Path(sweep_dir) / BEST_DIR)
        overrides.append(f"hydra.sweep.dir={_quote(out)}")
    from cl_bench.composition import CONF_DIR
    from cl_bench.config import spell_stream_keys

    return spell_stream_keys(overrides, CONF_DIR), Path(out)  # tasks.max_tasks=1 as clbench's


def check_overrides(overrides: Sequence[str]) -> None:
    """Compose and check the first run of the multirun ``overrides`` (each sweep at its first
    value; the hydra overrides are Hydra's to check) the way ``clbench`` would, before any run
    starts: the override syntax, unknown groups, options and keys, the top-level ranges
    (:func:`cl_bench.config.validate`) and the ``strategy`` / ``tasks`` / ``backbone`` keys
    (:func:`cl_bench.config.check_node`). Reads ``conf/``; writes nothing.

    Raises:
        ClBenchError: one line naming the bad override or key.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from cl_bench.composition import CONF_DIR, composition_error_line
    from cl_bench.config import check_node, validate

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ClBenchError(composition_error_line(e, list(overrides))) from None
    point = []
    for o in parsed:
        if o.is_hydra_override():
            continue
        if not o.is_sweep_override():
            point.append(o.input_line)
        elif o.is_interval_sweep():
            raise ClBenchError(f"{o.input_line}: an interval is a search space; give values "
                               f"(e.g. seed=0,1,2)")
        elif o.is_discrete_sweep() and o.value_type.name != "GLOB_CHOICE_SWEEP":
            first = next(iter(o.sweep_string_iterator()), None)
            if first is None:
                raise ClBenchError(f"{o.input_line}: an empty sweep")
            point.append(f"{o.get_key_element()}={first}")
    if GlobalHydra.instance().is_initialized():  # an app ran in this process before (tests)
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=point)
    except HydraException as e:
        raise ClBenchError(composition_error_line(e, point)) from None
    validate(cfg)
    for key in ("strategy", "tasks", "backbone"):
        check_node(cfg[key], key)


def run_best(overrides: Sequence[str]) -> int:
    """Run ``clbench -m <overrides>`` in a new process of this Python (Hydra runs one app per
    process cleanly; the runs' output goes straight to this terminal) and return its exit code.
    Prints the command first. Writes what clbench writes (the runs in ``hydra.sweep.dir``)."""
    command = [sys.executable, "-m", "cl_bench.cli", "-m", *overrides]
    print(f"{PROG}: running: clbench -m {shlex.join(overrides)}", flush=True)
    sys.stderr.flush()
    return subprocess.run(command, check=False).returncode


def _run_dirs(best_dir: Path, overrides: Sequence[str], swept: set[str]) -> list[Path]:
    """The run directories under ``best_dir`` of the best config: those whose
    ``.hydra/overrides.yaml``, without the ``swept`` keys, are ``overrides`` without them (runs
    of an earlier best config, left by a previous call after the search went on, are not)."""
    want = sorted(o for o in overrides if not o.startswith("hydra") and _key(o) not in swept)
    found = []
    for path in sorted(best_dir.glob("*/.hydra/overrides.yaml")):
        listed = OmegaConf.load(path)
        have = sorted(str(o) for o in listed if _key(str(o)) not in swept)
        if have == want and (path.parent.parent / "metrics.json").is_file():
            found.append(path.parent.parent)
    return found


def report_best(best_dir: Path, run_dirs: Sequence[Path]) -> tuple[str, Path]:
    """Aggregate ``run_dirs`` with ``clbench-report``'s machinery
    (:func:`cl_bench.report.cli.write_report`: every report file, written to ``<best_dir>/report``)
    and return the table of final-row metrics (mean ± std over seeds; markdown) and the path of
    the full table (``report.md``).

    Raises:
        ClBenchError: the runs cannot be read (from :func:`cl_bench.report.cli.write_report`).
    """
    from cl_bench.report.cli import write_report
    from cl_bench.report.tables import table

    out = best_dir / "report"
    summary, _, skipped = write_report(list(run_dirs), out)
    for s in skipped:
        print(f"{PROG}: skipped: {s}", file=sys.stderr)
    quantities = {c[:-len(" mean")] for c in summary.columns if c.endswith(" mean")}
    human = table(summary)
    shown = [c for c in human.columns if c not in quantities or not (
        c in _NOT_PRINTED or "[val]" in c or "(just learned)" in c)]
    return human[shown].to_markdown(index=False), out / "report.md"


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``clbench-best SWEEP_DIR [OVERRIDE ...]`` (module doc, :data:`USAGE`).

    Reads the search in ``SWEEP_DIR``; writes the runs to ``SWEEP_DIR/best/<n>_...`` (through
    clbench) and the report to ``SWEEP_DIR/best/report``; prints the command, the table and
    its path. A user mistake (not a search, no complete trial, a bad override) prints one line
    ``clbench-best: error: ...`` and exits with code 2 before any run; a failed run exits
    with 2 (clbench's error is printed above), an interrupted one with clbench's 130 / 143.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    flags = [a for a in args if a.startswith("-")]
    if flags:
        print(f"{PROG}: error: {flags[0]}: unknown option; usage: {PROG} SWEEP_DIR "
              f"[OVERRIDE ...] (--help)", file=sys.stderr)
        sys.exit(2)
    sweep_dir, extra = args[0], args[1:]
    try:
        overrides, best_dir = best_command(sweep_dir, extra)
        check_overrides(overrides)
        study, best = _best_trial(sweep_dir)
    except ClBenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{PROG}: best of {len(study.trials)} trials: trial {best.number}, "
          f"{study.user_attrs.get('objective', 'objective')} = {best.value:.6g} (validation): "
          + " ".join(f"{k}={v}" for k, v in best.params.items()), flush=True)
    try:
        code = run_best(overrides)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)
    if code != 0:
        print(f"{PROG}: error: clbench -m exited with code {code} (its error is above); the "
              f"runs are in {best_dir}", file=sys.stderr)
        sys.exit(code if code in (130, 143) else 2)
    swept = {_key(e) for e in extra}
    try:
        shown, path = report_best(best_dir, _run_dirs(best_dir, overrides, swept) or [best_dir])
    except ClBenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"\nbest config of {sweep_dir} on the test split (mean ± std over seeds):\n")
    print(shown)
    print(f"\n{PROG}: full table {path} (report.csv, runs.csv and the figures next to it)")


if __name__ == "__main__":
    main()
