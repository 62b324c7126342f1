"""The task-stream loop (docs/architecture.md §3): one model, a new Lightning Trainer per task, every task
evaluated after every task, results written atomically after each row."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cl_bench import checkpoint as ckpt
from cl_bench import probes
from cl_bench.config import build, build_stream, check_node, validate
from cl_bench.errors import ConfigError, Interrupted
from cl_bench.evaluation import evaluate_task
from cl_bench.hardware import cpu_name, resolve_precision
from cl_bench.lock import RunLock
from cl_bench.models.feature_cache import FeatureCache, IndexedDataset
from cl_bench.training import LitTask, ValidatedLitTask
from cl_bench.progress import TaskProgressBar, progress_callback, row_line
from cl_bench.loggers import close_logger, log_row, make_logger
from cl_bench.files import atomic_write, write_json
from cl_bench.results import matrix_frame, write_probes, write_results, write_task_agnostic

log = logging.getLogger(__name__)


@dataclass
class RunOutput:
    """What :func:`run` returns: the final metrics and the trained objects (for inspection)."""

    metrics: dict
    model: torch.nn.Module
    strategy: object
    run_dir: Path


def compile_model(model: torch.nn.Module) -> None:
    """``hardware.compile``: ``torch.compile`` the encoder and every head in place
    (``nn.Module.compile``: state-dict keys, checkpoints and hooks are unchanged). The first step
    of each task pays the compilation (minutes for the Swin backbone on 2 CPU cores; inductor
    needs a C++ compiler), and a new adapter or head recompiles."""
    model.encoder.compile()
    for head in model.heads.values():
        head.compile()


def _make_trainer(cfg: DictConfig, run_dir: Path, task_name: str, steps_per_epoch: int,
                  logger, t: int = 0, num_tasks: int = 1, early_stop: bool = False,
                  precision: str = "32-true") -> L.Trainer:
    hw, train = cfg.hardware, cfg.train
    progress = progress_callback(t, num_tasks, task_name, train.max_steps,
                                 train.log_every_n_steps, bool(train.progress_bar))
    callbacks = [progress]
    validate = {}  # no validation loop unless early stopping needs one
    if early_stop:  # Lightning's EarlyStopping on the task's validation loss (LitTask)
        callbacks.append(EarlyStopping(monitor=f"{task_name}/val_loss", mode="min",
                                       patience=train.early_stopping_patience))
        validate = dict(val_check_interval=train.val_every_n_steps, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0)
    if train.checkpoint_every_n_epochs > 0:
        # after the last batch of an epoch: from there Lightning resumes exactly (a checkpoint
        # taken in on_train_epoch_end replays one batch of that epoch on restore)
        callbacks.append(_EpochEndCheckpoint(
            train.checkpoint_min_interval_s,
            dirpath=str(ckpt.mid_task_dir(run_dir, task_name)), filename="mid_task",
            every_n_train_steps=train.checkpoint_every_n_epochs * steps_per_epoch, save_top_k=1,
            enable_version_counter=False))
    try:
        return L.Trainer(max_steps=train.max_steps, max_epochs=-1,  # max_steps decides
                         accelerator=hw.accelerator, devices=hw.devices, strategy=hw.strategy,
                         num_nodes=hw.num_nodes,
                         precision=precision,
                         deterministic=hw.deterministic, plugins=_cluster_plugins(),
                         logger=logger if logger is not None else False, callbacks=callbacks,
                         enable_checkpointing=len(callbacks) > 1, enable_model_summary=False,
                         enable_progress_bar=isinstance(progress, TaskProgressBar),
                         default_root_dir=str(run_dir),
                         log_every_n_steps=train.log_every_n_steps, **validate)
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise ConfigError(f"hardware: Lightning refused accelerator={hw.accelerator!r}, "
                          f"devices={hw.devices!r}, strategy={hw.strategy!r}, "
                          f"precision={hw.precision!r}: {e}") from None


class _EpochEndCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint at epoch ends (``every_n_train_steps`` a multiple of the
    epoch's steps), skipping a save due less than ``min_interval_s`` seconds after the task
    started or after the last save (a 4-second split_mnist stream wrote 15 checkpoints, now none);
    a kill loses at most ``min_interval_s`` plus an epoch of a task."""

    def __init__(self, min_interval_s: float, **kwargs):
        super().__init__(**kwargs)
        self.min_interval_s = float(min_interval_s)
        self._since = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._since = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._since < self.min_interval_s:
            return
        saved = self._last_global_step_saved
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._last_global_step_saved != saved:
            self._since = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but each ``.ckpt`` is written to a temporary file and
    renamed over the old one (:func:`~cl_bench.files.atomic_write`): a full disk or a kill
    during the write leaves the previous mid-task checkpoint readable (Lightning writes in place),
    and the failure is a :class:`~cl_bench.errors.StorageError` naming the file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(Path(path), lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(
            checkpoint, tmp, storage_options))


def _cluster_plugins() -> list:
    """Under SLURM, Lightning's cluster environment without its own requeue: submitit requeues
    (``hardware=slurm``) and the runner resumes from ``checkpoints/``; atomic checkpoint files."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False), AtomicCheckpointIO()]
    return [LightningEnvironment(), AtomicCheckpointIO()]


def _count(params) -> int:
    return sum(p.numel() for p in params)


def run(cfg: DictConfig, run_dir: str | Path) -> RunOutput:
    """Run ``cfg.tasks`` through ``cfg.strategy`` on ``cfg.backbone``; write results to ``run_dir``.

    If ``run_dir`` already holds checkpoints of this same config (an interrupted run, a SLURM
    requeue, ``resume=<run_dir>``), the run continues from them: finished tasks are not trained
    again and the task in progress continues from its last mid-task checkpoint.

    Returns:
        :class:`RunOutput` with the final metrics (also in ``run_dir/metrics.json``).

    Raises:
        ConfigError, DataError, TrainingError: user-caused problems, with rows done so far kept;
        ConfigError also when ``run_dir`` holds a run of another config (nothing is touched).
    """
    validate(cfg)  # ranges of train.*, hardware.*, eval.*, seed, results_dir: before anything
    run_dir = Path(run_dir)
    torch.set_num_threads(cfg.hardware.num_threads)

    # fail on any bad key before heavy work; tasks before backbone: backbone.img_size follows
    # tasks.size, and the message should name the key the user set
    for key in ("strategy", "tasks", "backbone"):
        check_node(cfg[key], key)
    if cfg.get("logger") and cfg.logger.get("_target_"):
        check_node(cfg.logger, "logger")
    main = getattr(rank_zero_only, "rank", 0) == 0  # DDP: only rank 0 evaluates and writes
    strategy = build(cfg.strategy, "strategy")
    strategy.seed = int(cfg.seed)  # the strategy's own generators (replay buffer, Fisher subset)
    strategy.cache_frozen = bool(cfg.train.cache_frozen_features)  # backbone and teacher caches
    strategy.class_weights = str(cfg.train.class_weights)  # every task loss a strategy builds
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same init whatever comes next
    model = build(cfg.backbone, "backbone")  # before the data: a bad checkpoint fails fast
    strategy.check_model(model)  # and a setting that does not fit the backbone (a LoRA rank)
    stream = build_stream(cfg)  # with tasks.n_val validation samples per task
    names = [t.name for t in stream]
    if not stream or len(set(names)) != len(names):
        raise ConfigError(f"tasks: expected a non-empty stream of uniquely named tasks, got {names}")
    torch.manual_seed(cfg.seed + 1)  # heads: independent of how the data were made (cache or not)
    for task in stream:
        channels = task.train[0]["image"].shape[0]
        if channels != model.encoder.in_channels:
            raise ConfigError(f"task {task.name!r} has {channels}-channel images but "
                              f"backbone.in_channels is {model.encoder.in_channels}; make them agree")
        spatial = task.train[0]["image"].dim() - 1
        if spatial != model.encoder.spatial_dims:
            raise ConfigError(f"task {task.name!r} has {spatial}D images but backbone "
                              f"{cfg.backbone.get('name')!r} has spatial_dims="
                              f"{model.encoder.spatial_dims}; pick a {spatial}D backbone")
    model.add_heads(stream)
    strategy.setup(model, stream)
    if cfg.hardware.compile:  # after setup: the adapters are in place
        compile_model(model)
    if cfg.eval.task_id not in ("oracle", "predicted"):
        raise ConfigError(f"eval.task_id: expected oracle or predicted, got {cfg.eval.task_id!r}")
    if cfg.eval.task_id == "predicted" and not strategy.task_agnostic:
        raise ConfigError(f"eval.task_id=predicted: strategy={strategy.name} does not predict "
                          "task ids; use eval.task_id=oracle or strategy=proteus|duallora")
    # one writer per run directory (cl_bench.lock): held from before anything is written; the
    # directory is made only now, so a refused config leaves none behind
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if main else contextlib.nullcontext():
        return _run_claimed(cfg, run_dir, stream, model, strategy, main)


class _SigTerm(BaseException):
    """SIGTERM outside Lightning's fit, raised by :func:`_terminate_as_interrupt`'s handler."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While the stream runs, SIGTERM stops it like Ctrl-C (an exception, so the run ends
    cleanly and says how to resume) instead of killing the process. Installed only in the main
    thread, where nobody else handles SIGTERM, and not in a SLURM job (there SIGTERM comes with a
    requeue or a cancel, and the job must end as SLURM and submitit expect; the requeued job
    resumes from the checkpoints); the previous handler is restored afterwards."""
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
                 and not SLURMEnvironment.detect())  # SLURM's SIGTERM: requeue or cancel
    if installed:
        def _raise(signum, frame):
            raise _SigTerm()
        previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def _run_claimed(cfg, run_dir: Path, stream, model, strategy, main: bool) -> RunOutput:
    """:func:`run` once the config is known runnable and the directory's lock is held."""
    # claim the run directory only once the config is known to be runnable: a refused config
    # leaves at most an empty directory (and a resume of another config is refused before anything is written)
    resuming = ckpt.claim_run_dir(run_dir, cfg, write=main)
    state = ckpt.load_boundary(run_dir) if resuming else None

    r = _StreamRun(cfg, run_dir, stream, model, strategy, main)
    if state is not None:  # rebuild the finished tasks' structure, then load their state
        r.restore(state)
    r.timing["resumed"] = r.timing.get("resumed", 0) + int(resuming)
    r.logger = make_logger(cfg, run_dir)
    try:
        with _terminate_as_interrupt():
            if "init" not in r.rows:
                r.timing["init_eval_s"] = r.evaluate_row("init")
                metrics = r.write_row("init")
            else:
                metrics = r.write_row(None)
            if r.done == len(stream):
                log.info("all %d tasks already done in %s: nothing to train", r.done, run_dir)
            for t in range(r.done, len(stream)):
                metrics = r.train_task(t)
    except (KeyboardInterrupt, SystemExit, _SigTerm) as e:
        # Ctrl-C (Lightning answers it inside fit with sys.exit(1)) or SIGTERM (Lightning's
        # SIGTERMException inside fit, _SigTerm outside): stop, say how to continue
        lightning_ctrl_c = type(e) is SystemExit and isinstance(e.__context__, KeyboardInterrupt)
        if type(e) is SystemExit and not lightning_ctrl_c or SLURMEnvironment.detect():
            raise  # a real exit; or SLURM's SIGTERM (requeue / cancel): end as SLURM expects
        r.draw_figures()
        raise r.interrupted(sigterm=isinstance(e, (SIGTERMException, _SigTerm))) from None
    except BaseException:
        r.draw_figures()  # where an error stopped the run (never masking that error)
        raise
    else:
        metrics = r.write_row(None, figures=True) or metrics  # the figures, once, at the end
    finally:
        close_logger(r.logger)
    return RunOutput(metrics, model, strategy, run_dir)


class _StreamRun:
    """The state of one run while it goes through the stream (what ``state.pt`` holds)."""

    def __init__(self, cfg, run_dir: Path, stream, model, strategy, main: bool = True):
        self.cfg, self.run_dir, self.stream, self.model, self.strategy = (
            cfg, run_dir, stream, model, strategy)
        self.main = main  # False on DDP ranks > 0: they train and evaluate in lockstep, write nothing
        self.rows, self.details = {}, {}
        # R on the validation sets (tasks.n_val > 0): what choices are made on
        self.val_rows, self.val_details = {}, {}
        self.has_val = all(t.val is not None for t in stream)
        # probes.json: per-stage movement of the backbone and the decoder's reliance on stages
        self.probes: dict = {"movement": {}, "reliance": {}}
        self.reference = probes.weight_snapshot(model.encoder)  # W_0 (rebuilt the same on resume)
        self.task_start = self.reference
        seg = [t for t in stream if t.kind == "segmentation"]
        self.reliance_task = (seg[0] if seg and hasattr(model.encoder, "stage_channels")
                              else None)
        # task-agnostic strategies: R of the other task-id mode and the retrieval-accuracy matrix
        self.other_rows, self.retrieval = {}, {}
        self.timing, self.params = {"tasks": {}}, {"tasks": {}}
        self.done, self.logger = 0, None
        self.extra = {"strategy": strategy.name, "seed": cfg.seed, "tasks": cfg.tasks.get("name"),
                      "backbone": cfg.backbone.get("name"), "run_dir": str(run_dir)}
        gpu = cfg.hardware.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
        self.device = "cuda" if gpu else "cpu"
        self.precision = resolve_precision(cfg.hardware.precision, cfg.hardware.accelerator,
                                           model.encoder)
        self.bf16 = self.precision.startswith("bf16")
        self.extra.update(precision=self.precision, cpu=cpu_name())  # results move with both
        self.t0 = time.perf_counter()

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
        self.rows, self.details = state["rows"], state["details"]
        self.val_rows = state.get("val_rows", {})
        self.probes = state.get("probes", self.probes)
        self.val_details = state.get("val_details", {})
        self.other_rows = state.get("other_rows", {})
        self.retrieval = state.get("retrieval", {})
        self.timing, self.params = state["timing"], state["params"]
        self.done = state["tasks_done"]
        self.t0 -= self.timing.get("total_s", 0.0)
        ckpt.set_rng_state(state["rng"])
        log.info("resuming %s after %d/%d tasks", self.run_dir, self.done, len(self.stream))

    def evaluate_row(self, label: str) -> float:
        """Evaluate every task into row ``label`` of R; returns the seconds it took.

        A task-agnostic strategy is evaluated with both the oracle and the predicted task id:
        ``eval.task_id`` picks the mode of R (``matrix.csv``), the other mode and the retrieval
        accuracies go to ``task_agnostic/``.

        Under DDP every rank evaluates the whole test set with the same weights (MONAI's and
        torchmetrics' metrics all-gather across ranks; duplicates leave the means unchanged)."""
        start = time.perf_counter()
        modes = [False, True] if self.strategy.task_agnostic else [False]
        if self.cfg.eval.task_id == "predicted":
            modes.reverse()
        cache: dict = {}  # one row, one set of weights: CISS steps share a test pass
        scores = [{t.name: evaluate_task(self.model, self.strategy, t,
                                         self.cfg.train.eval_batch_size, self.device, self.bf16,
                                         self.stream, predicted, cache)
                   for t in self.stream} for predicted in modes]
        self.rows[label] = [scores[0][t.name][t.metric] for t in self.stream]
        self.details[label] = scores[0]
        if len(modes) == 2:
            self.other_rows[label] = [scores[1][t.name][t.metric] for t in self.stream]
            pred = scores[modes.index(True)]
            self.retrieval[label] = [pred[t.name]["retrieval"] for t in self.stream]
            if self.cfg.eval.task_id == "oracle":
                for t in self.stream:  # keep the retrieval cost next to the oracle numbers
                    self.details[label][t.name]["retrieval"] = pred[t.name]["retrieval"]
                    self.details[label][t.name]["retrieval_ms_per_sample"] = (
                        pred[t.name]["retrieval_ms_per_sample"])
        if self.has_val:  # the validation R, in the run's task-id mode
            predicted = self.cfg.eval.task_id == "predicted"
            val = {t.name: evaluate_task(self.model, self.strategy, t,
                                         self.cfg.train.eval_batch_size, self.device, self.bf16,
                                         self.stream, predicted, {}, split="val")
                   for t in self.stream}
            self.val_rows[label] = [val[t.name][t.metric] for t in self.stream]
            self.val_details[label] = val
        seconds = time.perf_counter() - start
        if self.main:
            log.info(row_line(label, self.stream, self.rows[label], seconds))
        return seconds

    def write_row(self, label: str | None, figures: bool = False) -> dict:
        """Write the result files for the rows so far; log row ``label`` (None: just write).

        ``figures``: also draw the PNGs (else only for a logger that uploads images)."""
        if not self.main:
            return {}
        figures = figures or (label is not None and hasattr(self.logger, "log_image"))
        extra = dict(self.extra, eval_task_id=self.cfg.eval.task_id)
        if self.other_rows:
            other = "oracle" if self.cfg.eval.task_id == "predicted" else "predicted"
            extra["task_agnostic"] = write_task_agnostic(
                self.run_dir / "task_agnostic", self.stream, self.other_rows, self.retrieval,
                other, self.extra, figures)
        metrics = write_results(self.run_dir, self.stream, self.rows, self.details, extra, figures,
                                val_rows=self.val_rows if self.has_val else None,
                                val_details=self.val_details)
        if label is not None:
            log_row(self.logger, len(self.rows) - 1, label, matrix_frame(self.rows, self.stream),
                    self.run_dir / "heatmap.png")
        return metrics

    def interrupted(self, sigterm: bool) -> Interrupted:
        """The error of a run stopped by Ctrl-C / SIGTERM: where it will continue, and how."""
        t = self.done
        where = "the end"
        if t < len(self.stream):
            task = self.stream[t]
            mid = ckpt.mid_task_path(self.run_dir, task.name)
            where = (f"task {t + 1}/{len(self.stream)} {task.name} from its mid-task checkpoint "
                     f"({mid.relative_to(self.run_dir)})" if mid else
                     f"the start of task {t + 1}/{len(self.stream)} {task.name}")
        return Interrupted(
            f"interrupted by {'SIGTERM' if sigterm else 'Ctrl-C'} after {t}/{len(self.stream)} "
            f"tasks (rows so far in {self.run_dir / 'matrix.csv'}); continue at {where} with: "
            f"clbench resume={self.run_dir}", exit_code=143 if sigterm else 130)

    def draw_figures(self) -> None:
        """Draw the figures of the rows so far after a failure; a failure to draw them (a full
        disk) is logged, not raised, so the error that stopped the run stays the one reported."""
        if not self.rows:
            return
        try:
            self.write_row(None, figures=True)
        except Exception as e:  # the run's own error matters more
            log.warning("figures not drawn after the error: %s", e)

    def train_task(self, t: int) -> dict:
        """Train task ``t`` (continuing its mid-task checkpoint if any), evaluate all, save."""
        cfg, run_dir, task, strategy, model = (self.cfg, self.run_dir, self.stream[t],
                                               self.strategy, self.model)
        log.info("task %d/%d: %s (%s)", t + 1, len(self.stream), task.name, task.kind)
        L.seed_everything(cfg.seed * 1000 + t, workers=True, verbose=False)  # shuffle, dropout
        start = time.perf_counter()  # train_s: the strategy's hooks, calibration and the steps
        self.task_start = probes.weight_snapshot(model.encoder)  # for the movement probe
        model.begin_task(task)
        strategy.before_task(t, task)
        cache = None
        frozen = strategy.frozen_backbone(task)
        if strategy.cache_frozen and frozen:
            cache = FeatureCache(len(task.train))  # same batches: the sampler sees only len()
        # a head's standardisation follows the backbone while it trains (fixed when frozen)
        if model.calibrate_head(task, cfg.train.eval_batch_size, cache, track=not frozen):
            log.info("task %s: head input standardised on its %d training samples", task.name,
                     len(task.train))
        self._count_params(task)
        if cfg.train.batch_size > len(task.train):
            log.warning("train.batch_size=%d exceeds task %s's %d training samples: every step "
                        "uses the whole training set", cfg.train.batch_size, task.name,
                        len(task.train))
        # batches carry "index" (their positions in task.train): the key of per-sample caches
        loader = DataLoader(IndexedDataset(task.train), batch_size=cfg.train.batch_size,
                            shuffle=True)
        early_stop = cfg.train.early_stopping_patience > 0 and task.val is not None
        trainer = _make_trainer(cfg, run_dir, task.name, max(len(loader), 1), self.logger,
                                t, len(self.stream), early_stop, self.precision)
        mid = ckpt.mid_task_path(run_dir, task.name)
        if mid:
            ckpt.check_mid_task(run_dir, mid)
        if mid is not None:
            log.info("continuing task %s from %s", task.name, mid)
        first = None if "first_step_unix" in self.timing else self._first_step
        val_loader = (DataLoader(task.val, batch_size=cfg.train.eval_batch_size)
                      if early_stop else None)
        lit = ValidatedLitTask if early_stop else LitTask
        trainer.fit(lit(model, strategy, task, t, first, cache, cfg.train.warmup_steps,
                        cfg.train.class_weights), train_dataloaders=loader,
                    val_dataloaders=val_loader, ckpt_path=str(mid) if mid else None)
        if early_stop and trainer.global_step < cfg.train.max_steps:
            log.info("task %s: stopped early at step %d of %d (validation loss not better for "
                     "%d checks)", task.name, trainer.global_step, cfg.train.max_steps,
                     cfg.train.early_stopping_patience)
        strategy.after_task(t, task)
        train_s = time.perf_counter() - start
        eval_s = self.evaluate_row(f"after_{task.name}")
        probe_s = self.run_probes(f"after_{task.name}", task)
        metrics = self.write_row(f"after_{task.name}")
        if not self.main:
            return metrics
        strategy.save(run_dir, t, task)
        self.timing["tasks"][task.name] = {"train_s": train_s, "eval_s": eval_s,
                                           "probe_s": probe_s, "steps": trainer.global_step}
        self.timing["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device == "cuda":  # the process's peak allocated by PyTorch (all tasks so far)
            self.timing["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        self.timing["total_s"] = time.perf_counter() - self.t0
        write_json(run_dir / "timing.json", self.timing)
        ckpt.save_boundary(run_dir, {
            "tasks_done": t + 1, "task_names": [s.name for s in self.stream],
            "model": model.state_dict(), "strategy": strategy.state_dict(), "rows": self.rows,
            "val_rows": self.val_rows, "val_details": self.val_details, "probes": self.probes,
            "other_rows": self.other_rows, "retrieval": self.retrieval,
            "details": self.details, "timing": self.timing, "params": self.params})
        self.done = t + 1  # what state.pt now holds
        shutil.rmtree(ckpt.mid_task_dir(run_dir, task.name), ignore_errors=True)
        return metrics

    def run_probes(self, label: str, task) -> float:
        """Row ``label``'s probes (:mod:`cl_bench.probes`): each backbone stage's movement since
        the start (and ``task``'s adapter, if it has one), and the first segmentation task's
        Dice with each decoder input replaced by its training mean, once that task is trained.
        Returns the seconds they took."""
        start = time.perf_counter()
        adapters = getattr(self.strategy, "adapters", None) or []
        self.probes["movement"][label] = probes.movement(
            self.model.encoder, self.reference, task.name if task.name in adapters else None,
            self.task_start)
        rt = self.reliance_task
        if rt is not None and self.stream.index(rt) <= self.stream.index(task):
            self.probes["reliance"][label] = probes.reliance(
                self.model, self.strategy, rt, self.cfg.train.eval_batch_size, self.device)
        if self.main:
            write_probes(self.run_dir, self.probes)
        return time.perf_counter() - start

    def _first_step(self) -> None:
        """The wall-clock time (Unix s) of the run's first training step, for start-up costs."""
        self.timing["first_step_unix"] = time.time()

    def _count_params(self, task) -> None:
        """``params.json``: per task, what trains, split into the task's adapters, its head
        (for a segmentation task, its decoder) and the rest (backbone weights), with the
        adapters' share of the backbone (the brain-MRI study's "< 0.1 % of parameters",
        arXiv 2602.23533)."""
        model = self.model
        trainable_params = self.strategy.trainable_parameters()
        trainable = _count(trainable_params)
        total = _count(model.parameters())
        backbone = _count(p for n, p in model.encoder.named_parameters() if "lora_" not in n)
        adapters = _count(p for n, p in model.backbone.named_parameters()
                          if "lora_" in n and f".{task.name}." in n)
        head_ids = {id(p) for p in model.heads[task.name].parameters()}
        head = _count(model.heads[task.name].parameters())
        head_trainable = _count(p for p in trainable_params if id(p) in head_ids)
        self.params["tasks"][task.name] = {
            "trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
            "backbone": backbone, "head": head,
            "decoder": head if task.kind == "segmentation" else 0,
            "adapter": adapters,
            "trainable_backbone": trainable - head_trainable - adapters,
            "adapter_pct_of_backbone": 100.0 * adapters / backbone if backbone else 0.0,
            "adapter_pct_of_total": 100.0 * adapters / total,
            "head_pct_of_total": 100.0 * head / total}
        self.params["backbone_params"] = backbone
        if self.main:
            write_json(self.run_dir / "params.json", self.params)
