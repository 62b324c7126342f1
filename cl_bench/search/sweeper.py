"""Hydra's Optuna sweeper for cl_bench: a resumable hyperparameter search on the validation R.

``clbench -m hydra/sweeper=optuna 'strategy.lr=tag(log,interval(1e-4,1e-2))' tasks.n_val=100``
asks Optuna (TPE by default; Bergstra et al. 2011, NeurIPS; Akiba et al. 2019, arXiv 1907.10902)
for ``hydra.sweeper.n_trials`` configs and runs each as a trial through the configured Hydra
launcher (in this process, or a SLURM job array of ``n_jobs`` elements with ``hardware=slurm``).
Each trial runs with ``search.trial=<its number>``: its R is measured on the validation split
only, the test split is dropped before anything reads it (:func:`cl_bench.config.seal_test_split`),
and the job returns ``search.objective`` (:mod:`cl_bench.search.objective`) for Optuna.

The study lives in the sweep directory, in an Optuna journal file (``optuna_journal.log``: an
append-only log of the study's operations that survives a ``kill -9`` and works on NFS), or in
``hydra.sweeper.storage``. Run the same command again with ``hydra.sweep.dir=<that directory>``
(or the same ``hydra.sweeper.storage``) and the search continues: ``n_trials`` counts the
study's trials in all, so finished trials are not run again; a trial that was running when the
search died is launched again with the same values in the same run directory, where the runner
continues it from its checkpoints (or, if it had finished, its value is read from its
``metrics.json``).

Written after the ``hydra-optuna-sweeper`` plugin (facebookresearch/hydra, MIT; same override
grammar and ``params`` / ``sampler`` / ``n_trials`` / ``n_jobs`` / ``storage`` / ``study_name`` keys),
which pins ``optuna<3`` (no journal storage; its SQLite storage fails with SQLAlchemy 2) and, on a
resumed study, runs ``n_trials`` more trials. Deviations: ``n_trials`` is the study's total;
the direction is derived from the objective; interrupted trials are resumed; the first trial's
config is composed and checked before any trial runs; ``range`` follows Hydra's grammar
(:mod:`cl_bench.search.space`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from cl_bench.errors import ClBenchError, ConfigError, Interrupted, RunDirBusy
from cl_bench.ranges import Fraction, PositiveInt, check_value
from cl_bench.search.space import override_text, representative, search_space

log = logging.getLogger("cl_bench.search")

#: the journal file a study lives in, in the sweep directory (default storage)
JOURNAL = "optuna_journal.log"
#: what a finished search writes next to the journal (best trial, study, storage)
RESULTS = "optimization_results.yaml"


def open_storage(storage: str | None, sweep_dir: str | Path) -> Any:
    """The Optuna storage of a search.

    Args:
        storage: ``None`` (a journal file ``<sweep_dir>/optuna_journal.log``), a path to a journal
            file, or an RDB URL (``sqlite:///...``, ``postgresql://...``).
        sweep_dir: the sweep directory.

    Returns:
        an ``optuna.storages.JournalStorage`` for a file, else the URL (Optuna opens it).
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage and "://" in str(storage):
        return str(storage)
    path = Path(storage) if storage else Path(sweep_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def storage_label(storage: str | None, sweep_dir: str | Path) -> str:
    """Where the study lives, as a user would pass it back in ``hydra.sweeper.storage``."""
    if storage and "://" in str(storage):
        return str(storage)
    return str((Path(storage) if storage else Path(sweep_dir) / JOURNAL).resolve())


class OptunaSearch:
    """What ``hydra_plugins.clbench_optuna_sweeper.ClBenchOptunaSweeper`` does (module doc).

    Args (``conf/hydra/sweeper/optuna.yaml``):
        sampler: an Optuna sampler (Hydra instantiates ``sampler._target_``).
        n_trials: trials in the study in all (> 0).
        n_jobs: trials launched at once (one launcher call; a SLURM array of that size).
        storage: ``None`` (journal file in the sweep directory), a journal path, or an RDB URL.
        study_name: ``None``: ``<tasks.name>-<tasks.scenario or ''>-<strategy.name>``.
        max_failure_rate: the search stops with an error when more than this share of its
            finished trials failed (0..1).
        params: ``{key: sweep}`` search space (the command line's sweeps are added).

    Raises:
        ConfigError: a value out of range (naming ``hydra.sweeper.<key>``).
    """

    def __init__(self, sampler: Any = None, n_trials: int = 12, n_jobs: int = 1,
                 storage: str | None = None, study_name: str | None = None,
                 max_failure_rate: float = 0.5, params: Any = None) -> None:
        for key, value, hint in (("n_trials", n_trials, PositiveInt), ("n_jobs", n_jobs, PositiveInt),
                                 ("max_failure_rate", max_failure_rate, Fraction)):
            check_value(f"hydra.sweeper.{key}", value, hint)
        self.sampler, self.n_trials, self.n_jobs = sampler, n_trials, n_jobs
        self.storage, self.study_name = storage, study_name
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        """Hydra's Sweeper.setup: keep the context, make the launcher."""
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    # ------------------------------------------------------------------ before any trial
    def _arguments(self, arguments: Sequence[str]) -> list[str]:
        """``params`` items then the command line's overrides, as override strings."""
        out = []
        if self.params:
            for key, value in OmegaConf.to_container(self.params, resolve=True).items():
                out.append(f"{key}={value}")
        return out + list(arguments)

    def _compose(self, overrides: list[str]) -> DictConfig:
        """One trial's config, composed as the launcher will compose it.

        Raises:
            ConfigError: Hydra cannot compose it (an unknown key: one line naming it).
        """
        from hydra.errors import HydraException

        from cl_bench.composition import composition_error_line

        try:
            return self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides))
        except HydraException as e:
            raise ConfigError(f"search space: {composition_error_line(e, overrides)}") from None

    def preflight(self, dists: dict, fixed: dict) -> str:
        """Compose and check one trial's config before the search starts (values at the low
        end of each range): its keys, their ranges, ``tasks.n_val`` and the objective.

        Returns:
            the study's direction, ``"maximize"`` or ``"minimize"``.

        Raises:
            ConfigError: naming the first bad key (search space, ``tasks.n_val``,
                ``search.objective``).
        """
        from cl_bench.config import build, check_node, validate
        from cl_bench.search.objective import parse_objective  # here: it imports torch (kinds)

        objective = parse_objective(self.config.search.objective)
        overrides = ([f"{k}={v}" for k, v in fixed.items()]
                     + [override_text(k, representative(d)) for k, d in dists.items()]
                     + ["search.trial=0"])
        cfg = self._compose(overrides)
        validate(cfg)
        for key in ("strategy", "tasks", "backbone"):
            check_node(cfg[key], key)
        if not cfg.tasks.get("n_val"):
            raise ConfigError("tasks.n_val: a search evaluates its trials on validation samples "
                              "carved from each task's training set; set tasks.n_val > 0")
        metrics = None
        if objective.metric is None and objective.stat in ("maa", "final_average", "mft"):
            metrics = [t.metric for t in build(cfg.tasks, "tasks")]  # the stream's metric
        return objective.direction(metrics)

    def _study_name(self) -> str:
        if self.study_name:
            return str(self.study_name)
        tasks, strategy = self.config.tasks, self.config.strategy
        parts = [tasks.get("name"), tasks.get("scenario"), strategy.get("name")]
        return "-".join(str(p) for p in parts if p)

    def open_study(self, direction: str, dists: dict, fixed: dict):
        """Create the study or load it (a resumed search), recording what was searched.

        Raises:
            ConfigError: the stored study was made with another direction, objective or
                search space (a resume must search the same space).
        """
        import optuna
        from optuna.distributions import distribution_to_json

        sweep_dir = self.config.hydra.sweep.dir
        storage = open_storage(self.storage, sweep_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
        study = optuna.create_study(storage=storage, study_name=self._study_name(),
                                    sampler=self.sampler, direction=direction,
                                    load_if_exists=True)
        record = {"objective": str(self.config.search.objective), "direction": direction,
                  "search_space": {k: distribution_to_json(d) for k, d in dists.items()},
                  "fixed": dict(fixed)}
        where = storage_label(self.storage, sweep_dir)
        if study.trials:
            old = study.user_attrs
            for key in ("objective", "search_space", "fixed"):
                if key in old and old[key] != record[key]:
                    raise ConfigError(
                        f"hydra.sweeper.storage: the study {study.study_name!r} in {where} was "
                        f"searched with another {key.replace('_', ' ')} ({old[key]}); resume it "
                        f"with the same command, or start a new one (another hydra.sweep.dir or "
                        f"hydra.sweeper.study_name)")
            if study.direction.name.lower() != direction:
                raise ConfigError(f"search.objective: the study in {where} was made to "
                                  f"{study.direction.name.lower()}, this objective wants "
                                  f"{direction}")
        if study.trials and hasattr(self.sampler, "reseed_rng"):
            # the sampler's random state is not stored in the study: seeded again as at the
            # start, it would draw the first trials' values again
            self.sampler.reseed_rng()
        for key, value in record.items():
            study.set_user_attr(key, value)
        study.set_user_attr("sweep_dir", str(Path(sweep_dir).resolve()))
        return study, where

    # ------------------------------------------------------------------ the search
    def sweep(self, arguments: list[str]) -> Any:
        """Run the search (module doc); returns the study.

        Raises:
            ConfigError: a bad search space, objective or key, before any trial;
            ClBenchError: more than ``max_failure_rate`` of the finished trials failed.
        """
        from optuna.trial import TrialState

        dists, fixed = search_space(self._arguments(arguments))
        if not dists:
            raise ConfigError("hydra/sweeper=optuna: no search space; give a key a sweep, e.g. "
                              "'strategy.lr=tag(log,interval(1e-4,1e-2))', or hydra.sweeper.params")
        direction = self.preflight(dists, fixed)
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, Path(self.config.hydra.sweep.dir) / "multirun.yaml")
        study, where = self.open_study(direction, dists, fixed)
        finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        log.info("search %s: %s %s, %d/%d trials done%s; study in %s", study.study_name,
                 direction, self.config.search.objective, done, self.n_trials,
                 f", {len(stale)} interrupted (continued)" if stale else "", where)
        pending = list(stale)  # FrozenTrials: their number, params and overrides
        while True:
            done = len(study.get_trials(deepcopy=False, states=finished))
            if pending:
                batch, pending = pending[:self.n_jobs], pending[self.n_jobs:]
                self._run_batch(study, batch, fixed, resumed=True)
                continue
            left = self.n_trials - done
            if left <= 0:
                break
            trials = [study.ask(dists) for _ in range(min(self.n_jobs, left))]
            for trial in trials:
                trial.set_user_attr("overrides", self._overrides(trial.params, fixed, trial.number))
            self._run_batch(study, trials, fixed)
        return self._finish(study, where)

    @staticmethod
    def _overrides(params: dict, fixed: dict, number: int) -> list[str]:
        return ([f"{k}={v}" for k, v in fixed.items()]
                + [override_text(k, v) for k, v in params.items()]
                + [f"search.trial={number}"])

    def _run_batch(self, study, trials: list, fixed: dict, resumed: bool = False) -> None:
        """Launch ``trials`` (job numbers = trial numbers, so a trial's run directory is
        ``<sweep dir>/<number>_...``) and tell Optuna each outcome."""
        import optuna
        from hydra.core.utils import JobStatus

        numbers = [t.number for t in trials]
        overrides = [t.user_attrs.get("overrides") or self._overrides(t.params, fixed, t.number)
                     for t in trials]
        for t in trials:
            log.info("trial %d%s: %s", t.number, " (continued)" if resumed else "",
                     " ".join(override_text(k, v) for k, v in t.params.items()))
        self.validate(overrides)
        returns = []
        start = 0
        for end in range(1, len(trials) + 1):  # consecutive numbers share one launch
            if end == len(trials) or numbers[end] != numbers[end - 1] + 1:
                returns += list(self.launcher.launch(overrides[start:end],
                                                     initial_job_idx=numbers[start]))
                start = end
        failed, stopped, busy = [], None, []
        for number, ret in zip(numbers, returns):
            if isinstance(ret._return_value, RunDirBusy):  # a continued trial still running
                busy.append(f"trial {number}: {ret._return_value}")  # elsewhere (an old SLURM
                continue                                               # job): left RUNNING
            if isinstance(ret._return_value, Interrupted):  # Ctrl-C / SIGTERM: not a result
                stopped = stopped or number  # stays RUNNING: a resumed search continues it
                continue
            value = ret._return_value if ret.status == JobStatus.COMPLETED else None
            if isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(number, float(value), skip_if_finished=True)
                log.info("trial %d: %s = %.6g", number, self.config.search.objective, value)
                continue
            reason = (str(ret._return_value).strip().splitlines() or ["?"])[0]
            if ret.status == JobStatus.COMPLETED:
                reason = f"returned {value!r}, not a finite objective"
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d failed: %s", number, reason)
            failed.append(f"trial {number}: {reason}")
        if busy:
            raise ClBenchError(f"{busy[0]}; wait for it to end, then continue the search with "
                               "the same command (it is left running in the study)")
        if stopped is not None:
            sweep_dir = self.config.hydra.sweep.dir
            raise Interrupted(f"search stopped during trial {stopped} (its checkpoints are kept); "
                              f"continue the search with the same command and "
                              f"hydra.sweep.dir={sweep_dir}", exit_code=130)
        if failed:
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            n_failed, n_done = states.count("FAIL"), sum(s != "RUNNING" for s in states)
            if n_failed / max(n_done, 1) > self.max_failure_rate:
                raise ClBenchError(f"search stopped: {n_failed} of {n_done} finished trials "
                                   f"failed (hydra.sweeper.max_failure_rate="
                                   f"{self.max_failure_rate}); last: {failed[-1]}")

    def validate(self, batch: Sequence[Sequence[str]]) -> None:
        """Each trial's overrides compose (Hydra's ``Sweeper.validate_batch_is_legal``)."""
        for overrides in batch:
            self._compose(list(overrides))

    def _finish(self, study, where: str) -> Any:
        """Log and write the best trial (``optimization_results.yaml``, the plugin's file)."""
        sweep_dir = Path(self.config.hydra.sweep.dir)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        result = {"name": "optuna", "study_name": study.study_name, "storage": where,
                  "objective": str(self.config.search.objective),
                  "direction": study.direction.name.lower(),
                  "n_trials": len(study.trials), "n_complete": len(complete)}
        if complete:
            best = study.best_trial
            result.update(best_trial=best.number, best_value=best.value,
                          best_params=dict(best.params),
                          best_overrides=[o for o in best.user_attrs.get("overrides", [])
                                          if not o.startswith("search.trial=")])
            log.info("best: trial %d, %s = %.6g: %s", best.number, result["objective"],
                     best.value, " ".join(override_text(k, v) for k, v in best.params.items()))
            log.info("test it over seeds: clbench-best %s seed=0,1,2", sweep_dir)
        OmegaConf.save(OmegaConf.create(result), sweep_dir / RESULTS)
        return study
