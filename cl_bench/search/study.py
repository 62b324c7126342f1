"""``clbench-report`` on a search's sweep directory: the study's best config, trials and plots.

A sweep directory of ``clbench -m hydra/sweeper=optuna`` (:mod:`cl_bench.search.sweeper`) holds
the study (``optuna_journal.log``, or the storage named in ``optimization_results.yaml`` /
``multirun.yaml``) and one run directory per trial, ``<trial number>_<strategy>_seed<seed>/``.
:func:`write_study_report` writes, into ``<sweep dir>/study/``:

* ``best_config.yaml``: the best trial's composed config (its ``.hydra/config.yaml``) under a
  header naming the trial, the objective, its value and the overrides; ``best_overrides.txt``:
  those overrides, one a line (``search.trial=`` left out), for ``clbench``;
* ``trials.csv``: one row per trial (number, state, value, each searched key, start, duration,
  run directory);
* ``history.png`` (Optuna's optimisation history) and ``importance.png`` (the searched keys'
  importances): with too few complete trials for a plot, a ``.txt`` note says why instead.

A killed search (no ``optimization_results.yaml``, trials still ``RUNNING``) reports what it has.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cl_bench.errors import ClBenchError
from cl_bench.search.space import override_text
from cl_bench.search.sweeper import JOURNAL, RESULTS, open_storage

#: the master config of a multirun (Hydra writes it; the sweeper writes it before any trial)
MULTIRUN = "multirun.yaml"
#: the sweeper's Hydra class (``hydra.sweeper._target_`` of a search's ``multirun.yaml``)
SWEEPER_CLASS = "ClBenchOptunaSweeper"
#: where the study report goes in the sweep directory by default
STUDY_DIR = "study"


def _read_yaml(path: Path) -> dict | None:
    """A YAML file as a plain dict (interpolations that do not resolve outside Hydra, e.g.
    ``${now:...}``, left as written), or ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        value = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # unreadable, or YAML that OmegaConf rejects: nothing to learn from it
        return None
    return value if isinstance(value, dict) else None


def _sweeper_config(sweep_dir: Path) -> dict | None:
    """``hydra.sweeper`` of the sweep's ``multirun.yaml`` if it was an Optuna search, else None."""
    master = _read_yaml(sweep_dir / MULTIRUN) or {}
    sweeper = (master.get("hydra") or {}).get("sweeper") or {}
    return sweeper if str(sweeper.get("_target_", "")).endswith(SWEEPER_CLASS) else None


def is_study_dir(path: str | Path) -> bool:
    """Whether ``path`` is the sweep directory of a search: it holds ``optimization_results.yaml``
    (a finished search), ``optuna_journal.log`` (the default storage) or a ``multirun.yaml``
    made by the Optuna sweeper (a killed search with its study elsewhere). Reads only those
    files; never raises."""
    p = Path(path)
    try:
        if not p.is_dir():
            return False
        return ((p / RESULTS).is_file() or (p / JOURNAL).is_file()
                or _sweeper_config(p) is not None)
    except OSError:
        return False


def _plain(value: Any) -> str | None:
    """A storage / study-name setting as a string (``None``, ``""`` and unresolved Hydra
    interpolations such as ``${now:...}`` mean unset)."""
    if value is None or str(value).strip() in ("", "None", "null") or "${" in str(value):
        return None
    return str(value)


def _storage_setting(sweep_dir: Path) -> tuple[str | None, str | None]:
    """``(storage, study_name)`` as the search recorded them: ``optimization_results.yaml``
    (written when it ended), else ``hydra.sweeper`` of ``multirun.yaml`` (a killed search),
    else ``(None, None)`` (the journal in the sweep directory, its only study)."""
    results = _read_yaml(sweep_dir / RESULTS)
    if results:
        return _plain(results.get("storage")), _plain(results.get("study_name"))
    sweeper = _sweeper_config(sweep_dir) or {}
    return _plain(sweeper.get("storage")), _plain(sweeper.get("study_name"))


def _journal_path(storage: str | None, sweep_dir: Path) -> Path:
    """The journal file of a search: ``storage`` as given, or (a sweep directory that was
    moved, or a path relative to where the search ran) the file of that name in the sweep
    directory.

    Raises:
        ClBenchError: neither exists (naming both).
    """
    path = Path(storage) if storage else sweep_dir / JOURNAL
    if path.is_file():
        return path
    moved = sweep_dir / path.name
    if moved.is_file():
        return moved
    where = f"{path}" + (f" or {moved}" if moved != path else "")
    raise ClBenchError(f"no Optuna study for {sweep_dir}: its journal {where} does not exist")


def load_study(sweep_dir: str | Path) -> Any:
    """The Optuna study of a search's sweep directory.

    The storage and study name come from ``optimization_results.yaml`` if the search finished,
    else from ``hydra.sweeper.storage`` / ``study_name`` of its ``multirun.yaml``, else the
    journal ``<sweep_dir>/optuna_journal.log`` and the one study in it (where a storage holds
    several, the one whose ``sweep_dir`` attribute is this directory). The storage is opened by
    :func:`cl_bench.search.sweeper.open_storage`, as the search opened it. Reads only.

    Raises:
        ClBenchError: no study (naming the directory, or the missing journal), several studies
            and none of this directory (naming them), the named study is not in the storage, or
            the storage cannot be opened (an RDB server that does not answer).
    """
    import optuna

    sweep = Path(sweep_dir)
    storage_setting, name = _storage_setting(sweep)
    if storage_setting and "://" in storage_setting:
        where = storage_setting
    else:  # a journal file: check it exists first (opening one creates it)
        where = str(_journal_path(storage_setting, sweep))
    try:  # an RDB URL is opened once here (a server that is down, a missing driver: one line)
        storage = optuna.storages.get_storage(open_storage(where, sweep))
        studies = storage.get_all_studies() if name is None else []
    except Exception as e:  # whatever the storage backend raises
        raise ClBenchError(f"cannot open the study of {sweep} in {where}: "
                           f"{type(e).__name__}: {e}") from None
    if name is None:
        if not studies:
            raise ClBenchError(f"no Optuna study in {sweep} ({where} holds none)")
        if len(studies) > 1:
            here = str(sweep.resolve())
            mine = [s for s in studies if s.user_attrs.get("sweep_dir") == here]
            if len(mine) != 1:
                names = ", ".join(sorted(s.study_name for s in studies))
                raise ClBenchError(f"{where} holds {len(studies)} studies ({names}), "
                                   f"{'several' if mine else 'none'} of them of {sweep}; "
                                   f"which one is ambiguous")
            studies = mine
        name = studies[0].study_name
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # Optuna: "No such study"
        raise ClBenchError(f"no Optuna study {name!r} in {where} (named by {sweep})") from None


def trial_run_dir(sweep_dir: str | Path, number: int) -> Path | None:
    """The run directory of trial ``number``: ``<sweep_dir>/<number>_*`` (the sweeper launches
    trial N as Hydra job N). Among several, the one whose ``.hydra/overrides.yaml`` has
    ``search.trial=<number>``. ``None`` for a trial that never started. Reads only."""
    found = sorted(p for p in Path(sweep_dir).glob(f"{number}_*") if p.is_dir())
    if len(found) > 1:
        mark = f"search.trial={number}"
        tagged = [p for p in found
                  if mark in (_read_yaml_list(p / ".hydra" / "overrides.yaml") or [])]
        found = tagged or found
    return found[0] if found else None


def _read_yaml_list(path: Path) -> list | None:
    if not path.is_file():
        return None
    try:
        value = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # an unreadable overrides.yaml: this directory is not told apart by it
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def best_overrides(study: Any, trial: Any, sweep_dir: str | Path | None = None) -> list[str]:
    """The overrides that ran ``trial`` (a FrozenTrial), ``search.trial=`` left out: its
    ``overrides`` attribute, else its run directory's ``.hydra/overrides.yaml``, else rebuilt
    from the study's ``fixed`` attribute and the trial's params."""
    overrides = trial.user_attrs.get("overrides")
    if not overrides and sweep_dir is not None:
        run = trial_run_dir(sweep_dir, trial.number)
        overrides = _read_yaml_list(run / ".hydra" / "overrides.yaml") if run else None
    if not overrides:
        fixed = study.user_attrs.get("fixed") or {}
        overrides = ([f"{k}={v}" for k, v in fixed.items()]
                     + [override_text(k, v) for k, v in trial.params.items()])
    return [str(o) for o in overrides if not str(o).startswith("search.trial=")]


def _objective(study: Any) -> str:
    return str(study.user_attrs.get("objective") or "value")


def _complete(study: Any) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_line(study: Any) -> str | None:
    """``best: trial N, <objective> = <value>: <searched key=value ...>`` (the sweeper's own
    line), or ``None`` while no trial is complete."""
    if not _complete(study):
        return None
    best = study.best_trial
    params = " ".join(override_text(k, v) for k, v in best.params.items())
    return f"best: trial {best.number}, {_objective(study)} = {best.value:.6g}: {params}"


def trials_table(study: Any, sweep_dir: str | Path) -> Any:
    """One row per trial of ``study`` (a pandas DataFrame): ``number``, ``state``, ``value``
    (NaN unless complete), one column per searched key (in the order of the study's
    ``search_space``), ``datetime_start`` (ISO 8601), ``duration_s`` (NaN while running) and
    ``run_dir`` (relative to ``sweep_dir``; empty for a trial that never started)."""
    import pandas as pd

    keys = list(study.user_attrs.get("search_space") or {})
    for t in study.get_trials(deepcopy=False):
        keys += [k for k in t.params if k not in keys]
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = trial_run_dir(sweep_dir, t.number)
        start, end = t.datetime_start, t.datetime_complete
        row = {"number": t.number, "state": t.state.name,
               "value": t.value if t.value is not None else math.nan}
        row.update({k: t.params.get(k) for k in keys})
        row.update(datetime_start=start.isoformat() if start else "",
                   duration_s=(end - start).total_seconds() if start and end else math.nan,
                   run_dir=run.name if run else "")
        rows.append(row)
    columns = ["number", "state", "value", *keys, "datetime_start", "duration_s", "run_dir"]
    return pd.DataFrame(rows, columns=columns)


def _importance_problem(study: Any) -> str | None:
    """Why the importances cannot be measured (a sentence), or ``None`` if they can."""
    complete = _complete(study)
    if len(complete) < 2:
        return (f"{len(complete)} complete trial{'s' if len(complete) != 1 else ''}: "
                f"importances need at least 2")
    varied = [k for k in dict.fromkeys(k for t in complete for k in t.params)
              if len({repr(t.params.get(k)) for t in complete}) > 1]
    if not varied:
        return "no searched key took two values over the complete trials"
    if len({t.value for t in complete}) < 2:
        return f"every complete trial has the same {_objective(study)} ({complete[0].value:.6g})"
    return None


def _write(out: Path, name: str, plot, note: str | None, written: dict) -> None:
    """``<name>.png`` from ``plot()`` (an Axes), or ``<name>.txt`` holding ``note``; the other
    one is removed (a report rewritten as the study grows must not keep a stale file)."""
    png, txt = out / f"{name}.png", out / f"{name}.txt"
    if note is None:
        import matplotlib.pyplot as plt
        from optuna.exceptions import ExperimentalWarning

        try:
            # rc_context: Optuna's plots switch the process-wide style to ggplot
            # (plt.style.use); restored on exit, so clbench-report's own figures keep theirs
            with warnings.catch_warnings(), plt.rc_context():
                # Optuna's matplotlib plots are marked experimental (the interface may change);
                # the warning is about the API, not this study's numbers, so it is left out.
                warnings.filterwarnings("ignore", category=ExperimentalWarning)
                fig = plot().figure
                fig.tight_layout()
                fig.savefig(png, dpi=110)
                plt.close(fig)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # a study Optuna cannot plot
            note = f"not plotted: {type(e).__name__}: {e}"
        else:
            txt.unlink(missing_ok=True)
            written[name] = png
            return
    txt.write_text(f"{name}.png not written: {note}\n")
    png.unlink(missing_ok=True)
    written[f"{name}_note"] = txt


def write_study_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                       study: Any = None) -> dict[str, Path]:
    """Write the report of the search in ``sweep_dir`` (module doc) into ``out_dir`` (default
    ``<sweep_dir>/study/``, created).

    Reads the study (:func:`load_study`, unless ``study`` is given) and each trial's run
    directory (``.hydra/config.yaml`` of the best trial).

    Returns:
        ``{name: path}`` of the files written: ``trials`` (``trials.csv``), ``best_config``
        (``best_config.yaml``) and ``best_overrides`` (``best_overrides.txt``) once a trial is
        complete, ``history`` / ``importance`` (the ``.png``); a ``.txt`` note in place of a
        file that could not be made is returned as ``<name>_note`` (``best_config_note``:
        no complete trial yet, or the best trial's run directory is gone; ``history_note``:
        no complete trial; ``importance_note``: fewer than 2 complete trials, no searched key
        or value that varies, or a study Optuna cannot plot).

    Raises:
        ClBenchError: from :func:`load_study` (no study, or an ambiguous one).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, also without a display
    from optuna.visualization import matplotlib as optuna_plots

    sweep = Path(sweep_dir)
    study = study if study is not None else load_study(sweep)
    out = Path(out_dir) if out_dir else sweep / STUDY_DIR
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    trials_table(study, sweep).to_csv(out / "trials.csv", index=False)
    written["trials"] = out / "trials.csv"

    complete = _complete(study)
    config_path, overrides_path = out / "best_config.yaml", out / "best_overrides.txt"
    note = "no complete trial yet"
    if complete:
        best = study.best_trial
        overrides = best_overrides(study, best, sweep)
        overrides_path.write_text("".join(f"{o}\n" for o in overrides))
        written["best_overrides"] = overrides_path
        run = trial_run_dir(sweep, best.number)
        config = run / ".hydra" / "config.yaml" if run else None
        if config is not None and config.is_file():
            direction = study.direction.name.lower()
            header = [
                f"Best trial of the Optuna study {study.study_name!r} ({sweep}):",
                f"trial {best.number} of {len(study.trials)} ({len(complete)} complete), "
                f"{_objective(study)} = {best.value!r} ({direction}).",
                f"Its config as composed for the trial ({run.name}/.hydra/config.yaml; "
                f"search.trial: {best.number} made it evaluate on the validation split).",
                "Its overrides (best_overrides.txt):",
                *(f"  {o}" for o in overrides),
                f"On the test split, over seeds: clbench-best {sweep} seed=0,1,2",
            ]
            config_path.write_text("".join(f"# {h}\n" for h in header) + config.read_text())
            config_path.with_suffix(".txt").unlink(missing_ok=True)
            written["best_config"] = config_path
            note = None
        else:
            note = (f"trial {best.number} (the best) has no run directory with "
                    f".hydra/config.yaml in {sweep}; its overrides are in best_overrides.txt")
    if not complete:
        overrides_path.unlink(missing_ok=True)
    if note is not None:
        config_path.with_suffix(".txt").write_text(f"best_config.yaml not written: {note}\n")
        config_path.unlink(missing_ok=True)
        written["best_config_note"] = config_path.with_suffix(".txt")

    _write(out, "history", lambda: optuna_plots.plot_optimization_history(
        study, target_name=_objective(study)),
        None if complete else "no complete trial yet", written)
    _write(out, "importance", lambda: optuna_plots.plot_param_importances(
        study, target_name=_objective(study)), _importance_problem(study), written)
    return written
