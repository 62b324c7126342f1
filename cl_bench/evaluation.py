"""Evaluation of one task (:func:`evaluate_task`) and of one row of R, every task of the
stream with the same weights (:func:`evaluate_row`): Dice (segmentation), MAE in native units
(regression), accuracy, mIoU.

A plain ``torch.inference_mode`` loop (no Lightning overhead per call; the R matrix needs
O(T^2) of these). What differs between task kinds (the scorer, how a head's output becomes a
prediction, what an unanswerable sample gets) is looked up in :data:`cl_bench.kinds.KINDS`;
this module holds the loop. The metrics, their sources and what a row of R keeps of each:
:mod:`cl_bench.kinds`' module docstring.

Task id at test (``eval.task_id``): ``oracle`` runs every test sample with its own task's
adapter and head. ``predicted`` asks the strategy (:meth:`Strategy.predict_task_id`) which task
each sample belongs to and runs it with *that* task's adapter and head, as a task-agnostic model
must. A sample sent to a task of another kind or output size cannot be answered by it: it counts as
wrong (classification), all background (segmentation) or the task's mean target (regression).
Classification answers are compared in the stream's global class space, so a task-IL stream
evaluated with predicted ids is scored like class-IL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.kinds import TaskScorer, kind_spec
from cl_bench.strategies.base import Strategy


def _compatible(a: Task, b: Task) -> bool:
    """Can ``a``'s head answer a sample of ``b`` in ``b``'s terms? (same kind, and the kind's
    :attr:`~cl_bench.kinds.KindSpec.compatible`)"""
    if a.kind != b.kind:
        return False
    return kind_spec(a.kind).compatible(a, b)


def test_batches(dataset, batch_size: int):
    """Batches ``{"image", "label"}`` of ``dataset`` in order: zero-copy slices of an
    :class:`~cl_bench.data.base.ArrayDataset`'s stacked tensors (what a DataLoader would collate,
    without collating every row of R again), a ``DataLoader`` for any other dataset."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        return ({"image": images[i:i + batch_size], "label": labels[i:i + batch_size]}
                for i in range(0, len(images), batch_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def answer(model, task: Task, x: torch.Tensor, autocast) -> torch.Tensor:
    """``task``'s head on ``x``, as a prediction in the terms of
    :meth:`~cl_bench.kinds.TaskScorer.update`.

    Args:
        model: the stream's ``ContinualModel``; x: ``(B, C, *spatial)`` images;
        autocast: the context to run the forward pass in (a ``torch.autocast`` or a null one).

    Returns:
        on the CPU: segmentation ``(B, *spatial)`` class map; regression ``(B,)`` in native
        units (``task.target_std`` and ``target_mean`` undone); classification ``(B,)`` global
        class ids; class-incremental segmentation ``(B, *spatial)`` global class ids
        (:attr:`cl_bench.kinds.KindSpec.answer`).

    Raises:
        UnknownKindError: ``task.kind`` is not in :data:`cl_bench.kinds.KINDS`.
    """
    with autocast:
        out = model(x, task.name).float().cpu()
    return kind_spec(task.kind).answer(model, task, out)


def _no_answer(task: Task, x: torch.Tensor, scorer: TaskScorer) -> torch.Tensor:
    """What a sample sent to an incompatible task gets (see module docstring;
    :attr:`~cl_bench.kinds.KindSpec.no_answer`)."""
    return kind_spec(task.kind).no_answer(task, x, scorer)


@torch.inference_mode()
def evaluate_task(model: torch.nn.Module, strategy: Strategy, task: Task,
                  batch_size: int = 4, device: str | torch.device = "cpu",
                  bf16: bool = False, stream: list[Task] | None = None,
                  predicted: bool = False, cache: dict | None = None,
                  split: str = "test") -> dict[str, float]:
    """Score ``model`` on ``task.test`` (or ``task.val``) with the oracle or the predicted task id.

    Args:
        model, strategy, task: what to evaluate; batch_size: test batch size;
        device: where to run; bf16: bfloat16 autocast (``hardware.precision=bf16-mixed``);
        stream: the whole stream (needed with ``predicted``: ids index into it);
        predicted: route each sample by ``strategy.predict_task_id`` (see module docstring);
        cache: a dict shared by the calls of one R row (same weights): CISS steps share one test
        set, so a step whose test set and active classes were scored already reuses that
        confusion matrix instead of another pass (oracle ids only; results are identical);
        split: ``"test"`` (the reported R) or ``"val"`` (the validation set of
        :func:`~cl_bench.data.base.carve_validation`, what choices are made on).

    Returns:
        ``{task.metric: value, ...}``: for segmentation also ``dice_<label>`` per foreground
        label; for regression also ``mae_normalised`` (MAE divided by ``task.target_std``) and
        ``mae_mean_predictor`` (the MAE of always answering the training mean ``target_mean``).
        With ``predicted``: also ``retrieval`` (share of samples routed to ``task``) and
        ``retrieval_ms_per_sample`` (wall time of the task-id prediction).

    Raises:
        ConfigError: ``predicted`` with a strategy that predicts no task id, or on a
        class-incremental segmentation step (no per-sample task id); ``split="val"`` on a task
        without a validation set.
        UnknownKindError: ``task.kind`` is not in :data:`cl_bench.kinds.KINDS`.
    """
    dataset = task.test if split == "test" else task.val
    if dataset is None:
        raise ConfigError(f"task {task.name!r} has no validation set; set tasks.n_val > 0")
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    if first is not None and first.device != torch.device(device):
        model.to(device)
    loader = test_batches(dataset, batch_size)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    spec = kind_spec(task.kind)
    active = None
    if spec.active_classes:
        view = model.heads[task.name]
        active = view.shared.active_classes(view.task_index)
    scorer = TaskScorer(task, stream, active)
    j = stream.index(task) if predicted else None
    hits, n, predict_s = 0, 0, 0.0
    key = None
    if spec.active_classes and not predicted and cache is not None:
        key = (task.kind, id(dataset), tuple(active))
        if key in cache:
            scorer.metric = cache[key]
            model.train(was_training)
            return scorer.result()
    if not predicted:
        strategy.activate(task)
    for batch in loader:
        x, label = batch["image"].to(device), batch["label"]
        if not predicted:
            scorer.update(answer(model, task, x, autocast), label)
            continue
        start = time.perf_counter()
        with autocast:
            ids = strategy.predict_task_id(x)
        predict_s += time.perf_counter() - start
        if ids is None:
            raise ConfigError(f"eval.task_id=predicted: strategy {strategy.name!r} predicts no "
                              "task id; use eval.task_id=oracle or a task-agnostic strategy")
        ids = ids.cpu().long()
        pred = _no_answer(task, x, scorer)
        for i in ids.unique().tolist():
            sel = ids == i
            other = stream[i]
            if _compatible(other, task):
                strategy.activate(other)
                pred[sel] = answer(model, other, x[sel.to(x.device)], autocast).to(pred.dtype)
        scorer.update(pred, label)
        hits += int((ids == j).sum())
        n += len(ids)
    if key is not None:
        cache[key] = scorer.metric
    result = scorer.result()
    if predicted:
        result["retrieval"] = hits / max(n, 1)
        result["retrieval_ms_per_sample"] = 1000.0 * predict_s / max(n, 1)
    model.train(was_training)
    return result


@dataclass
class Row:
    """One row of R, as :func:`evaluate_row` computes it (lists are in stream order).

    Attributes:
        scores: each task's headline metric (``task.metric``) in the run's task-id mode;
        details: ``{task name: every score of evaluate_task}`` in that mode;
        other, retrieval: a task-agnostic strategy's scores in the other task-id mode and the
            share of each task's test samples routed to it (``None`` otherwise);
        val_scores, val_details: the same as scores/details on the validation sets, in the
            run's mode (``None`` without validation sets).
    """

    scores: list[float]
    details: dict
    other: list[float] | None = None
    retrieval: list[float] | None = None
    val_scores: list[float] | None = None
    val_details: dict | None = None


def evaluate_row(model, strategy, stream, batch_size: int, device: str, bf16: bool,
                 task_id: str = "oracle", val: bool = False) -> Row:
    """Evaluate every task of ``stream`` with the current weights: one row of R.

    A task-agnostic strategy is evaluated with both the oracle and the predicted task id:
    ``task_id`` (``eval.task_id``) picks the mode of the row, the other mode and the retrieval
    accuracies go to :attr:`Row.other` / :attr:`Row.retrieval`. ``val``: also score the
    validation sets (run's mode only). Under DDP every rank evaluates the whole test set with the
    same weights (MONAI's and torchmetrics' metrics all-gather across ranks; duplicates leave
    the means unchanged).

    Raises:
        ConfigError: ``task_id="predicted"`` with a strategy that predicts no task id.
    """
    modes = [False, True] if strategy.task_agnostic else [False]
    if task_id == "predicted":
        modes.reverse()
    cache: dict = {}  # one row, one set of weights: CISS steps share a test pass
    scores = [{t.name: evaluate_task(model, strategy, t, batch_size, device, bf16, stream,
                                     predicted, cache)
               for t in stream} for predicted in modes]
    row = Row([scores[0][t.name][t.metric] for t in stream], scores[0])
    if len(modes) == 2:
        row.other = [scores[1][t.name][t.metric] for t in stream]
        pred = scores[modes.index(True)]
        row.retrieval = [pred[t.name]["retrieval"] for t in stream]
        if task_id == "oracle":
            for t in stream:  # keep the retrieval cost next to the oracle numbers
                row.details[t.name]["retrieval"] = pred[t.name]["retrieval"]
                row.details[t.name]["retrieval_ms_per_sample"] = (
                    pred[t.name]["retrieval_ms_per_sample"])
    if val:
        predicted = task_id == "predicted"
        val_scores = {t.name: evaluate_task(model, strategy, t, batch_size, device, bf16, stream,
                                            predicted, {}, split="val")
                      for t in stream}
        row.val_scores = [val_scores[t.name][t.metric] for t in stream]
        row.val_details = val_scores
    return row
