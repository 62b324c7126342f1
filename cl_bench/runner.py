"""The task-stream loop (docs/architecture.md §3): one model, a new Lightning Trainer per task, every task
evaluated after every task, results written atomically after each row."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torch import nn

from cl_bench import checkpoint as ckpt
from cl_bench import probes, signals
from cl_bench.checkpoint import RunState
from cl_bench.config import build, build_stream, check_node, validate
from cl_bench.errors import ConfigError, Interrupted
from cl_bench.evaluation import evaluate_row
from cl_bench.files import write_json
from cl_bench.hardware import capped_threads, cpu_name, resolve_precision
from cl_bench.loggers import close_logger, log_row, make_logger
from cl_bench.lock import RunLock
from cl_bench.models.feature_cache import FeatureCache
from cl_bench.progress import row_line
from cl_bench.results import (matrix_frame, recorded_timing, write_probes, write_results,
                              write_task_agnostic)
from cl_bench.strategies.base import Strategy
from cl_bench.training import compile_model, fit_task

log = logging.getLogger(__name__)


@dataclass
class RunOutput:
    """What :func:`run` returns: the final metrics and the trained objects (for inspection)."""

    metrics: dict
    model: torch.nn.Module
    strategy: object
    run_dir: Path


@dataclass(frozen=True)
class BuildTimes:
    """How long :func:`build_run` took, in seconds of ``time.perf_counter``.

    Attributes:
        start: ``time.perf_counter()`` when the build began: the run's clock (``timing.json``'s
            ``total_s``) starts here, after Python's imports and Hydra's composition;
        data_s: building the stream (``build_stream``: generating the data or loading them
            from the cache), ``timing.json``'s ``data_s``;
        build_s: the rest of the build (config checks, strategy, backbone and its weights,
            heads, ``strategy.setup``, compilation), ``timing.json``'s ``build_s``.
    """

    start: float
    data_s: float
    build_s: float


#: ``timing.json`` entries summed over the processes of a run (a resume adds its own)
_SUMMED = ("total_s", "data_s", "build_s", "resumed")


def run(cfg: DictConfig, run_dir: str | Path) -> RunOutput:
    """Run ``cfg.tasks`` through ``cfg.strategy`` on ``cfg.backbone``; write results to ``run_dir``.

    If ``run_dir`` already holds checkpoints of this same config (an interrupted run, a SLURM
    requeue, ``resume=<run_dir>``), the run continues from them: finished tasks are not trained
    again and the task in progress continues from its last mid-task checkpoint.

    Where the time went is in ``run_dir/timing.json`` (seconds): ``data_s`` (building the
    stream), ``build_s`` (the rest of :func:`build_run`), ``init_eval_s``, per task
    ``tasks.<name>`` = ``{train_s, eval_s, probe_s, steps}`` (``continued``: true when the task
    went on from a mid-task checkpoint, its ``train_s`` then counts this process only) and
    ``total_s`` from the build's start to the last file written; what none of these covers
    (result files, figures, checkpoints, a stopped task's lost part) is ``total_s`` minus their
    sum. A resumed run builds again: ``total_s``, ``data_s``, ``build_s`` and ``resumed`` (the
    number of resumes) are sums over the run's processes; the other entries are the last
    process's for the phases it ran.

    Returns:
        :class:`RunOutput` with the final metrics (also in ``run_dir/metrics.json``).

    Raises:
        ConfigError, DataError, TrainingError: user-caused problems, with rows done so far kept;
        ConfigError also when ``run_dir`` holds a run of another config (nothing is touched).
    """
    run_dir = Path(run_dir)
    main = getattr(rank_zero_only, "rank", 0) == 0  # DDP: only rank 0 evaluates and writes
    model, strategy, stream, times = build_run(cfg)
    # one writer per run directory (cl_bench.lock): held from before anything is written; the
    # directory is made only now, so a refused config leaves none behind
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if main else contextlib.nullcontext():
        return _run_claimed(cfg, run_dir, stream, model, strategy, main, times)


def build_run(cfg: DictConfig) -> tuple[nn.Module, Strategy, list, BuildTimes]:
    """Everything :func:`run` builds before it trains, checked, and how long that took:
    ``(model, strategy, stream, times)`` (:class:`BuildTimes`, seconds).

    The config's ranges and keys are checked first, then the strategy, the backbone (checked
    against the strategy, e.g. a LoRA rank), the stream (with ``tasks.n_val`` validation
    samples per task), the heads, the strategy's ``setup`` (adapters in place) and, with
    ``hardware.compile``, compilation. Sets the thread count and the seeds as a run does.

    Raises:
        ConfigError, DataError: a bad key or value, a backbone or stream the strategy refuses
            (one line naming it); nothing is written.
    """
    start = time.perf_counter()
    validate(cfg)  # ranges of train.*, hardware.*, eval.*, seed, results_dir: before anything
    torch.set_num_threads(capped_threads(cfg.hardware.num_threads))  # <= the CPUs
    # with hardware.deterministic: PyTorch's NaN-filling of every new tensor (off by default;
    # a resumed run's saved config has no run-local keys, hence the default here)
    torch.utils.deterministic.fill_uninitialized_memory = bool(
        cfg.hardware.get("fill_uninitialized_memory", False))

    # fail on any bad key before heavy work; tasks before backbone: backbone.img_size follows
    # tasks.size, and the message should name the key the user set
    for key in ("strategy", "tasks", "backbone"):
        check_node(cfg[key], key)
    if cfg.get("logger") and cfg.logger.get("_target_"):
        check_node(cfg.logger, "logger")
    strategy = build(cfg.strategy, "strategy")
    strategy.seed = int(cfg.seed)  # the strategy's own generators (replay buffer, Fisher subset)
    strategy.cache_frozen = bool(cfg.train.cache_frozen_features)  # backbone and teacher caches
    strategy.class_weights = str(cfg.train.class_weights)  # every task loss a strategy builds
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same init whatever comes next
    model = build(cfg.backbone, "backbone")  # before the data: a bad checkpoint fails fast
    strategy.check_model(model)  # and a setting that does not fit the backbone (a LoRA rank)
    data_start = time.perf_counter()
    stream = build_stream(cfg)  # with tasks.n_val validation samples per task
    data_s = time.perf_counter() - data_start
    names = [t.name for t in stream]
    if not stream or len(set(names)) != len(names):
        raise ConfigError(f"tasks: expected a non-empty stream of uniquely named tasks, got {names}")
    torch.manual_seed(cfg.seed + 1)  # heads: independent of how the data were made (cache or not)
    model.check_stream(stream, cfg.backbone.get("name"))
    model.add_heads(stream)
    strategy.setup(model, stream)
    if cfg.hardware.compile:  # after setup: the adapters are in place
        compile_model(model)
    if cfg.eval.task_id == "predicted" and not strategy.task_agnostic:
        raise ConfigError(f"eval.task_id=predicted: strategy={strategy.name} does not predict "
                          "task ids; use eval.task_id=oracle or strategy=proteus|duallora")
    return model, strategy, stream, BuildTimes(start, data_s,
                                               time.perf_counter() - start - data_s)


def _run_claimed(cfg, run_dir: Path, stream, model, strategy, main: bool,
                 times: BuildTimes) -> RunOutput:
    """:func:`run` once the config is known runnable and the directory's lock is held;
    ``times``: the build's (:func:`build_run`), counted into ``timing.json``."""
    # claim the run directory only once the config is known to be runnable: a refused config
    # leaves at most an empty directory (and a resume of another config is refused before anything is written)
    resuming = ckpt.claim_run_dir(run_dir, cfg, write=main)
    state = ckpt.load_boundary(run_dir) if resuming else None

    r = _StreamRun(cfg, run_dir, stream, model, strategy, main, start=times.start)
    if state is not None:  # rebuild the finished tasks' structure, then load their state
        r.restore(state)
    r.count_process(times, resuming)
    s = r.state
    r.logger = make_logger(cfg, run_dir)
    try:
        with signals.terminate_as_interrupt(), signals.catch_sigint():
            if "init" not in s.rows:
                s.timing["init_eval_s"] = r.evaluate_row("init")
                metrics = r.write_row("init")
            else:
                metrics = r.write_row(None)
            if s.tasks_done == len(stream):
                log.info("all %d tasks already done in %s: nothing to train", s.tasks_done,
                         run_dir)
            for t in range(s.tasks_done, len(stream)):
                signals.check()  # a Ctrl-C dropped during the last evaluation or save
                metrics = r.train_task(t)
    except (KeyboardInterrupt, SystemExit, signals.SigTerm) as e:
        # Ctrl-C (Lightning answers it inside fit with sys.exit(1)) or SIGTERM (Lightning's
        # SIGTERMException inside fit, signals.SigTerm outside): stop, say how to continue
        lightning_ctrl_c = type(e) is SystemExit and isinstance(e.__context__, KeyboardInterrupt)
        if type(e) is SystemExit and not lightning_ctrl_c or SLURMEnvironment.detect():
            raise  # a real exit; or SLURM's SIGTERM (requeue / cancel): end as SLURM expects
        r.record_wall_time()  # the task cut short counts
        r.draw_figures()
        raise _interrupted(run_dir, stream, r.state.tasks_done,
                           sigterm=isinstance(e, (SIGTERMException, signals.SigTerm))) from None
    except BaseException:
        r.record_wall_time()
        r.draw_figures()  # where an error stopped the run (never masking that error)
        raise
    else:
        metrics = r.write_row(None, figures=True) or metrics  # the figures, once, at the end
        r.record_wall_time()  # the final figures and a finished run's resume count
    finally:
        close_logger(r.logger)
    return RunOutput(metrics, model, strategy, run_dir)


def _interrupted(run_dir: Path, stream, done: int, sigterm: bool) -> Interrupted:
    """The error of a run stopped by Ctrl-C / SIGTERM after ``done`` finished tasks: where it
    will continue, and how."""
    where = "the end"
    if done < len(stream):
        task = stream[done]
        mid = ckpt.mid_task_path(run_dir, task.name)
        where = (f"task {done + 1}/{len(stream)} {task.name} from its mid-task checkpoint "
                 f"({mid.relative_to(run_dir)})" if mid else
                 f"the start of task {done + 1}/{len(stream)} {task.name}")
    return Interrupted(
        f"interrupted by {'SIGTERM' if sigterm else 'Ctrl-C'} after {done}/{len(stream)} "
        f"tasks (rows so far in {run_dir / 'matrix.csv'}); continue at {where} with: "
        f"clbench resume={run_dir}", exit_code=143 if sigterm else 130)


class _StreamRun:
    """One run going through its stream: its :class:`~cl_bench.checkpoint.RunState` (what
    ``state.pt`` holds), the rows it evaluates and the files it writes after each."""

    def __init__(self, cfg, run_dir: Path, stream, model, strategy, main: bool = True,
                 start: float | None = None):
        """``start``: the ``time.perf_counter()`` the run's clock starts from (the build's
        start, :class:`BuildTimes`; None: now)."""
        self.cfg, self.run_dir, self.stream, self.model, self.strategy = (
            cfg, run_dir, stream, model, strategy)
        self.main = main  # False on DDP ranks > 0: they train and evaluate in lockstep, write nothing
        self.state = RunState(task_names=[t.name for t in stream])
        self.has_val = all(t.val is not None for t in stream)  # R on the validation sets too
        self.reference = probes.weight_snapshot(model.encoder)  # W_0 (rebuilt the same on resume)
        self.task_start = self.reference
        self.logger = None
        self.extra = {"strategy": strategy.name, "seed": cfg.seed, "tasks": cfg.tasks.get("name"),
                      "backbone": cfg.backbone.get("name"), "run_dir": str(run_dir),
                      # a search trial's R is on the validation split (config.seal_test_split)
                      "eval_split": "test" if cfg.get("search", {}).get("trial") is None
                      else "val"}
        gpu = cfg.hardware.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
        self.device = "cuda" if gpu else "cpu"
        self.precision = resolve_precision(cfg.hardware.precision, cfg.hardware.accelerator,
                                           model.encoder)
        self.extra.update(precision=self.precision, cpu=cpu_name())  # results move with both
        self.t0 = time.perf_counter() if start is None else start

    def restore(self, state: dict) -> None:
        """Continue after ``state["tasks_done"]`` finished tasks (see :mod:`cl_bench.checkpoint`)."""
        names = [t.name for t in self.stream]
        if state["task_names"] != names:
            raise ConfigError(f"resume: {self.run_dir} was run on tasks {state['task_names']}, "
                              f"this stream has {names}")
        for t in range(state["tasks_done"]):
            self.model.begin_task(self.stream[t])
            self.strategy.before_task(t, self.stream[t])
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.state = RunState.from_dict(state)
        ckpt.set_rng_state(state["rng"])
        log.info("resuming %s after %d/%d tasks", self.run_dir, self.state.tasks_done,
                 len(self.stream))

    def count_process(self, times: BuildTimes, resuming: bool) -> None:
        """Count this process into ``timing.json``: its build's ``data_s`` and ``build_s``
        (seconds) are added to those recorded, and ``resumed`` goes up by one on a resume.

        On a resume (``resuming``) the run's clock and the summed entries (``total_s``,
        ``data_s``, ``build_s``, ``resumed``) continue from the larger of ``state.pt``'s values
        and ``timing.json``'s: ``timing.json`` is the newer record after a stop (its
        ``total_s`` includes the task cut short) and after a finished run was resumed (which
        rewrites no checkpoint); without ``state.pt`` (stopped before the first task ended)
        ``timing.json``'s values alone. Call after :meth:`restore`. An unreadable
        ``timing.json`` counts as empty.
        """
        s = self.state.timing
        if resuming:
            recorded = recorded_timing(self.run_dir)
            for key in _SUMMED:
                s[key] = max(s.get(key, 0), recorded.get(key, 0))
            # the time of every process of the run so far, a stopped one's cut-short task
            # included (timing.json's total_s, recorded when it stopped: record_wall_time)
            self.t0 -= s["total_s"]
        s["data_s"] = s.get("data_s", 0.0) + times.data_s
        s["build_s"] = s.get("build_s", 0.0) + times.build_s
        s["resumed"] = s.get("resumed", 0) + int(resuming)

    def evaluate_row(self, label: str) -> float:
        """Evaluate every task into row ``label`` (:func:`evaluate_row`); returns the seconds."""
        start = time.perf_counter()
        row = evaluate_row(self.model, self.strategy, self.stream, self.cfg.train.eval_batch_size,
                           self.device, self.precision.startswith("bf16"),
                           self.cfg.eval.task_id, self.has_val)
        s = self.state
        s.rows[label], s.details[label] = row.scores, row.details
        if row.other is not None:
            s.other_rows[label], s.retrieval[label] = row.other, row.retrieval
        if row.val_scores is not None:
            s.val_rows[label], s.val_details[label] = row.val_scores, row.val_details
        seconds = time.perf_counter() - start
        if self.main:
            log.info(row_line(label, self.stream, row.scores, seconds, row.details))
        return seconds

    def write_row(self, label: str | None, figures: bool = False) -> dict:
        """Write the result files for the rows so far; log row ``label`` (None: just write).

        ``figures``: also draw the PNGs (else only for a logger that uploads images)."""
        if not self.main:
            return {}
        s = self.state
        figures = figures or (label is not None and hasattr(self.logger, "log_image"))
        extra = dict(self.extra, eval_task_id=self.cfg.eval.task_id)
        if s.other_rows:
            other = "oracle" if self.cfg.eval.task_id == "predicted" else "predicted"
            extra["task_agnostic"] = write_task_agnostic(
                self.run_dir / "task_agnostic", self.stream, s.other_rows, s.retrieval,
                other, self.extra, figures)
        metrics = write_results(self.run_dir, self.stream, s.rows, s.details, extra, figures,
                                val_rows=s.val_rows if self.has_val else None,
                                val_details=s.val_details)
        if label is not None:
            log_row(self.logger, len(s.rows) - 1, label, matrix_frame(s.rows, self.stream),
                    self.run_dir / "heatmap.png")
        return metrics

    def record_wall_time(self) -> None:
        """The run's wall time so far into ``timing.json``'s ``total_s`` (seconds), beside the
        task ends: when it stops (its cut-short task included) and when it ends (the final
        figures included); a failure to write it is logged, not raised."""
        if not self.main:
            return
        self.state.timing["total_s"] = time.perf_counter() - self.t0
        try:
            write_json(self.run_dir / "timing.json", self.state.timing)
        except OSError as e:  # the run's own error matters more
            log.warning("timing.json not written after the stop: %s", e)

    def draw_figures(self) -> None:
        """Draw the figures of the rows so far after a failure; a failure to draw them (a full
        disk) is logged, not raised, so the error that stopped the run stays the one reported."""
        if not self.state.rows:
            return
        try:
            self.write_row(None, figures=True)
        except Exception as e:  # the run's own error matters more
            log.warning("figures not drawn after the error: %s", e)

    def train_task(self, t: int) -> dict:
        """Train task ``t`` (continuing its mid-task checkpoint if any), evaluate all, save."""
        cfg, run_dir, task, strategy, model, s = (self.cfg, self.run_dir, self.stream[t],
                                                  self.strategy, self.model, self.state)
        log.info("task %d/%d: %s (%s)", t + 1, len(self.stream), task.name, task.kind)
        L.seed_everything(cfg.seed * 1000 + t, workers=True, verbose=False)  # shuffle, dropout
        start = time.perf_counter()  # train_s: the strategy's hooks, calibration and the steps
        self.task_start = probes.weight_snapshot(model.encoder)  # for the movement probe
        model.begin_task(task)
        strategy.before_task(t, task)
        frozen = strategy.frozen_backbone(task)
        # same batches with a cache: the sampler sees only len()
        cache = FeatureCache(len(task.train)) if strategy.cache_frozen and frozen else None
        # a head's standardisation follows the backbone while it trains (fixed when frozen)
        if model.calibrate_head(task, cfg.train.eval_batch_size, cache, track=not frozen):
            log.info("task %s: head input standardised on its %d training samples", task.name,
                     len(task.train))
        s.params["tasks"][task.name] = model.count_params(task, strategy.trainable_parameters())
        s.params["backbone_params"] = s.params["tasks"][task.name]["backbone"]
        if self.main:
            write_json(run_dir / "params.json", s.params)
        first = None if "first_step_unix" in s.timing else self._first_step
        continued = ckpt.mid_task_path(run_dir, task.name) is not None  # train_s: the rest only
        steps = fit_task(cfg, run_dir, model, strategy, task, t, len(self.stream), self.logger,
                         self.precision, cache, first)
        strategy.after_task(t, task)
        train_s = time.perf_counter() - start
        eval_s = self.evaluate_row(f"after_{task.name}")
        probe_s = self.run_probes(f"after_{task.name}", task)
        metrics = self.write_row(f"after_{task.name}")
        if not self.main:
            return metrics
        strategy.save(run_dir, t, task)
        s.timing["tasks"][task.name] = {"train_s": train_s, "eval_s": eval_s,
                                        "probe_s": probe_s, "steps": steps}
        if continued:  # steps counts the stopped process's too, train_s does not
            s.timing["tasks"][task.name]["continued"] = True
        s.timing["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device == "cuda":  # the process's peak allocated by PyTorch (all tasks so far)
            s.timing["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        s.timing["total_s"] = time.perf_counter() - self.t0
        write_json(run_dir / "timing.json", s.timing)
        s.tasks_done = t + 1  # the cursor state.pt holds
        ckpt.save_boundary(run_dir, s.to_dict(model.state_dict(), strategy.state_dict()))
        shutil.rmtree(ckpt.mid_task_dir(run_dir, task.name), ignore_errors=True)
        return metrics

    def run_probes(self, label: str, task) -> float:
        """Row ``label``'s probes (:func:`cl_bench.probes.row_probes`) into ``probes.json``;
        returns the seconds they took."""
        start = time.perf_counter()
        if not self.cfg.eval.get("probes", True):  # eval.probes=false (a run saved before
            return 0.0                              # the key existed: on)
        found = self.state.probes
        found["movement"][label], reliance = probes.row_probes(
            self.model, self.strategy, self.stream, task, self.reference, self.task_start,
            self.cfg.train.eval_batch_size, self.device, self.precision.startswith("bf16"))
        if reliance is not None:
            found["reliance"][label] = reliance
        if self.main:
            write_probes(self.run_dir, found)
        return time.perf_counter() - start

    def _first_step(self) -> None:
        """The wall-clock time (Unix s) of the run's first training step, for start-up costs."""
        self.state.timing["first_step_unix"] = time.time()

