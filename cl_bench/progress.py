"""What the terminal shows while a stream runs: one progress bar per task, one line per row of R.

Built on Lightning's progress-bar callback (:class:`~lightning.pytorch.callbacks.TQDMProgressBar`):
:class:`TaskProgressBar` counts optimiser steps against ``train.max_steps`` across epochs (Lightning's
own bar counts batches of one epoch and shows ``Epoch 49/-2`` when only ``max_steps`` bounds the
run), names the task and its place in the stream and shows the loss, the speed and the time left::

    task 1/2 tumour_seg │ step 312/600 │ loss 0.237 │ 5.2 it/s │ ETA 00:58

When ``train.progress_bar=false`` or stdout is not a terminal (SLURM logs, CI, a pipe), carriage-
return bars would be garbage in a file, so :class:`StepLogLines` logs the same fields as one plain
line every ``train.log_every_n_steps`` steps instead. Evaluation rows are announced by
:func:`row_line` (``row after_brain_age: tumour_seg Dice 0.612, brain_age MAE 18.9 years
(predicting the mean: 16.3) (4.1 s)``, a regression task beside its mean predictor).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from cl_bench.summary import fmt_value, metric_label, wrap_parts

log = logging.getLogger("cl_bench.progress")

def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _StepStats:
    """Loss (exponential moving average) and speed of the steps done in this process.

    Each step's loss is kept as the (detached) tensor it is and read only when a line or the bar
    is drawn (no ``float()`` of a device tensor per step)."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self._loss: float | None = None
        self._pending: list = []  # losses since the last read (tensors or floats)
        self.start_step = 0
        self.start = time.perf_counter()

    def begin(self, step: int) -> None:
        self.start_step, self.start = step, time.perf_counter()

    def update(self, outputs: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._pending.append(loss.detach() if hasattr(loss, "detach") else float(loss))
            if len(self._pending) >= 1000:  # bounded memory whatever train.log_every_n_steps
                self._fold()

    def _fold(self) -> None:
        for value in self._pending:
            value = float(value)
            self._loss = value if self._loss is None else 0.9 * self._loss + 0.1 * value
        self._pending.clear()

    @property
    def loss(self) -> float | None:
        """The smoothed loss: ``0.9 * previous + 0.1 * step loss`` over every step so far."""
        self._fold()
        return self._loss

    def rate(self, step: int) -> float | None:
        elapsed = time.perf_counter() - self.start
        done = step - self.start_step
        return done / elapsed if done > 0 and elapsed > 0 else None

    def fields(self, step: int) -> list[str]:
        """``["step 312/600", "loss 0.237", "5.2 it/s", "ETA 00:58"]``."""
        rate = self.rate(step)
        eta = (self.max_steps - step) / rate if rate else None
        loss = self.loss
        return [f"step {step}/{self.max_steps}",
                "loss " + ("?" if loss is None else f"{loss:.4g}"),
                ("?" if rate is None else f"{rate:.2f}" if rate < 10 else f"{rate:.1f}") + " it/s",
                f"ETA {_clock(eta)}"]


class TaskProgressBar(TQDMProgressBar):
    """One tqdm bar per task that counts optimiser steps up to ``max_steps``.

    Args:
        t: 0-based index of the task in the stream; num_tasks: the stream's length;
        task_name: the task's name; max_steps: ``train.max_steps`` (the bar's total).

    A resumed task starts the bar at the restored step. Lightning's ``v_num`` and the logged
    metric names are not shown; the loss is the returned training loss (task loss plus the
    strategy's term), smoothed over the last ~10 steps.
    """

    #: seconds between redraws (a fast stream does hundreds of steps per second)
    MIN_INTERVAL = 0.1

    def __init__(self, t: int, num_tasks: int, task_name: str, max_steps: int):
        super().__init__(refresh_rate=1, leave=True)
        self.label = f"task {t + 1}/{num_tasks} {task_name}"
        self.stats = _StepStats(max_steps)
        self._drawn = 0.0

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc=self.label, total=self.stats.max_steps, position=2 * self.process_position,
                    disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout,
                    bar_format="{desc}")

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.n = trainer.global_step
        self.stats.begin(trainer.global_step)
        self._show(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole task: no reset per epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stats.update(outputs)
        if time.perf_counter() - self._drawn >= self.MIN_INTERVAL:
            self._show(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, *_: Any) -> None:
        pass

    def on_train_end(self, trainer: L.Trainer, *_: Any) -> None:
        self._show(trainer)
        self.train_progress_bar.close()

    def _show(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        self._drawn = time.perf_counter()
        bar.n = trainer.global_step
        bar.set_description_str(" │ ".join([self.label, *self.stats.fields(trainer.global_step)]),
                                refresh=True)


class StepLogLines(Callback):
    """Plain log lines instead of a bar: ``task 1/2 tumour_seg step 310/600 loss 0.237 …``.

    Args: as :class:`TaskProgressBar`, plus ``every``: log every this many steps (and at the
    last step); ``train.log_every_n_steps``.
    """

    def __init__(self, t: int, num_tasks: int, task_name: str, max_steps: int, every: int):
        self.label = f"task {t + 1}/{num_tasks} {task_name}"
        self.stats = _StepStats(max_steps)
        self.every = max(int(every), 1)

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.stats.begin(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stats.update(outputs)
        step = trainer.global_step
        if trainer.is_global_zero and (step % self.every == 0 or step >= self.stats.max_steps):
            log.info("%s %s", self.label, " ".join(self.stats.fields(step)))


def progress_callback(t: int, num_tasks: int, task_name: str, max_steps: int, every: int,
                      bar: bool) -> Callback:
    """The bar when ``bar`` and stdout is a terminal, else plain lines (see module docstring)."""
    if bar and sys.stdout.isatty():
        return TaskProgressBar(t, num_tasks, task_name, max_steps)
    return StepLogLines(t, num_tasks, task_name, max_steps, every)


def row_line(label: str, stream, values: list[float], seconds: float,
             details: dict | None = None, width: int | None = None) -> str:
    """``row after_brain_age: tumour_seg Dice 0.612, brain_age MAE 18.9 years (predicting the
    mean: 16.3) (4.1 s)``: a row of R as the run announces it.

    A regression task names its baseline, the MAE of always answering the training mean
    (:func:`cl_bench.kinds.task_baselines`), so a model worse than guessing shows as such while
    the run goes; a line wider than ``width`` breaks between tasks
    (:func:`~cl_bench.summary.wrap_parts`).

    Args:
        label: the row (``init``, ``after_<task>``); stream: the tasks (``metric``, ``units``,
            ``kind``); values: the row of R in task order, native units; seconds: the row's
            evaluation time; details: the row's ``{task: every score}``
            (:attr:`cl_bench.evaluation.Row.details`), where the baselines are read (None: no
            baselines shown); width: the line width (None: :func:`~cl_bench.summary.terminal_width`).

    Returns:
        The text (more than one line only if it is wider than ``width``).

    Raises:
        UnknownKindError: with ``details``, a task's kind is not in :data:`cl_bench.kinds.KINDS`.
    """
    from cl_bench.kinds import task_baselines

    baselines = task_baselines(stream, {label: details}) if details else {}
    parts = []
    for task, v in zip(stream, values):
        unit = f" {task.units}" if getattr(task, "units", None) else ""
        mean = baselines.get(task.name, {}).get("mean_predictor")
        versus = "" if mean is None else f" (predicting the mean: {fmt_value(mean)})"
        parts.append(f"{task.name} {metric_label(task.metric)} {fmt_value(v)}{unit}{versus}")
    return wrap_parts(f"row {label}: ", parts, f" ({seconds:.1f} s)", width)
