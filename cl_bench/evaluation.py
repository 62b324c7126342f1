"""Evaluation of one task: Dice (segmentation), MAE in native units (regression), accuracy.

A plain ``torch.inference_mode`` loop (no Lightning overhead per call; the R matrix needs
O(T^2) of these).

* Dice: MONAI ``DiceMetric`` (Dice 1945; as used for BraTS, Menze et al. 2015) on argmax
  one-hot predictions, background excluded, subjects whose ground truth lacks a label are ignored
  for that label; the task's value is the mean over foreground labels of the mean over subjects.
* MAE: torchmetrics ``MeanAbsoluteError`` in the target's native units (years for brain age).
* accuracy: torchmetrics ``MulticlassAccuracy`` (micro: share of correctly classified images).
* mIoU (class-incremental segmentation): a torchmetrics ``MulticlassConfusionMatrix`` over the
  whole test set, IoU per class (:func:`cl_bench.metrics.iou_from_confusion`). Pixels of classes
  the model has no active output for yet, and 255, are ignored (as MiB's and STAR's evaluators
  do). A step's value in R is the mean IoU of its classes (step 0: plus background); the row's
  ``miou_base`` (background + step-0 classes: STAR's "old"), ``miou_new`` (classes of later
  steps), ``miou_all`` and ``iou_<c>`` per class go to the details.

Task id at test (``eval.task_id``): ``oracle`` runs every test sample with its own task's
adapter and head. ``predicted`` asks the strategy (:meth:`Strategy.predict_task_id`) which task
each sample belongs to and runs it with *that* task's adapter and head, as a task-agnostic model
must. A sample sent to a task of another kind or output size cannot be answered by it: it counts as
wrong (classification), all background (segmentation) or the task's mean target (regression).
Classification answers are compared in the stream's global class space, so a task-IL stream
evaluated with predicted ids is scored like class-IL.
"""

from __future__ import annotations

import contextlib
import time

import torch
from monai.metrics import DiceMetric
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.regression import MeanAbsoluteError

from cl_bench.data.base import CISS, IGNORE_INDEX, Task
from cl_bench.errors import ConfigError
from cl_bench.metrics import iou_from_confusion, mean_iou
from cl_bench.strategies.base import Strategy


def global_classes(task: Task, pred: torch.Tensor) -> torch.Tensor:
    """Map a classification head's output indices ``(B,)`` to stream-wide class ids.

    Task-IL heads answer in the task's local indices (``task.classes`` gives the global ids);
    the class-IL head already answers in the stream's class space.
    """
    if task.scenario == "class_il":
        return pred
    return torch.as_tensor(task.classes, dtype=torch.long)[pred]


def _compatible(a: Task, b: Task) -> bool:
    """Can ``a``'s head answer a sample of ``b`` in ``b``'s terms?"""
    if a.kind != b.kind:
        return False
    return a.kind != "segmentation" or a.num_classes == b.num_classes


@contextlib.contextmanager
def _cpu_counting(device: torch.device):
    """Let torchmetrics count with ``torch.bincount`` on the CPU in deterministic mode.

    With ``torch.use_deterministic_algorithms(True)`` (``hardware.deterministic``) torchmetrics
    replaces ``torch.bincount`` by an ``(N, K^2)`` comparison mesh, because bincount is
    nondeterministic on CUDA; on the CPU it is an exact integer count either way, and the mesh
    made a CISS confusion matrix ~100x slower than the model's forward pass. The flag is
    restored on exit; on other devices nothing changes."""
    if device.type != "cpu" or not torch.are_deterministic_algorithms_enabled():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)


class Scorer:
    """Accumulates one task's metric over batches of predictions in the task's own terms:
    MONAI's Dice (segmentation, foreground classes), torchmetrics' MAE (regression, native
    units, e.g. years), accuracy (classification) or mIoU from a confusion matrix
    (class-incremental segmentation, over the classes learned so far).

    Args:
        task: the task scored; stream: the whole stream (the class-incremental tables need it);
        active: for class-incremental segmentation, the foreground classes the model can
            answer now, in learning order.

    Feed it :meth:`update` with :func:`answer`'s predictions; :meth:`result` gives
    ``{task.metric: value, ...}``.
    """

    def __init__(self, task: Task, stream: list[Task] | None = None,
                 active: list[int] | None = None):
        self.task = task
        if task.kind == CISS:
            # active: the foreground classes the model can answer now, in learning order
            self.active = list(active or [])
            self.metric = MulticlassConfusionMatrix(num_classes=task.num_classes,
                                                    ignore_index=IGNORE_INDEX)
            lut = torch.full((max(task.num_classes, IGNORE_INDEX + 1),), IGNORE_INDEX)
            lut[[0] + self.active] = torch.as_tensor([0] + self.active)
            self.lut = lut  # ground truth id -> itself if answerable, else ignored
        elif task.kind == "segmentation":
            self.metric = DiceMetric(include_background=False, reduction="mean_batch",
                                     ignore_empty=True)
        elif task.kind == "regression":
            self.metric = MeanAbsoluteError()
            self.baseline = MeanAbsoluteError()  # the mean predictor: always target_mean
        else:
            # every global class id a head of the stream can answer
            n = max([task.num_classes] + [max(t.classes) + 1 for t in (stream or [task])
                                          if t.kind == "classification" and t.classes])
            self.none_class = n  # the answer of a sample no compatible head could take
            self.metric = MulticlassAccuracy(num_classes=n + 1, average="micro")

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """``pred``: segmentation ``(B, *spatial)`` class map, regression ``(B,)`` native units,
        classification ``(B,)`` global class ids; ``label`` as stored in the dataset."""
        task = self.task
        if task.kind == CISS:
            with _cpu_counting(pred.device):
                self.metric.update(pred.long(), self.lut[label[:, 0].long()])
        elif task.kind == "segmentation":
            k = task.num_classes
            self.metric(torch.nn.functional.one_hot(pred.long(), k).movedim(-1, 1),
                        torch.nn.functional.one_hot(label[:, 0].long(), k).movedim(-1, 1))
        elif task.kind == "regression":
            self.metric.update(pred, label.float())
            self.baseline.update(torch.full_like(label.float(), task.target_mean), label.float())
        else:
            with _cpu_counting(pred.device):
                self.metric.update(pred, global_classes(task, label.long()))

    def result(self) -> dict[str, float]:
        task = self.task
        if task.kind == CISS:
            iou = iou_from_confusion(self.metric.compute().numpy())
            own = ([0] if task.info["step"] == 0 else []) + list(task.classes)
            base = [0] + task.stream_classes[:task.info["n_base"]]
            new = [c for c in self.active if c not in base]
            out = {"miou": mean_iou(iou, own), "miou_base": mean_iou(iou, base),
                   "miou_new": mean_iou(iou, new), "miou_all": mean_iou(iou, [0] + self.active)}
            out.update({f"iou_{c}": float(iou[c]) for c in [0] + self.active})
            return out
        if task.kind == "segmentation":
            per_label = self.metric.aggregate()  # (K-1,), NaN where no subject had the label
            valid = per_label[~torch.isnan(per_label)]
            out = {"dice": float(valid.mean()) if len(valid) else float("nan")}
            out.update({f"dice_{i}": v for i, v in enumerate(per_label.tolist(), start=1)})
            return out
        if task.kind == "regression":
            mae = float(self.metric.compute())
            return {"mae": mae, "mae_normalised": mae / task.target_std,
                    "mae_mean_predictor": float(self.baseline.compute())}
        return {"accuracy": float(self.metric.compute())}


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
    """``task``'s head on ``x``, as a prediction in the terms of :meth:`Scorer.update`.

    Args:
        model: the stream's ``ContinualModel``; x: ``(B, C, *spatial)`` images;
        autocast: the context to run the forward pass in (a ``torch.autocast`` or a null one).

    Returns:
        on the CPU: segmentation ``(B, *spatial)`` class map; regression ``(B,)`` in native
        units (``task.target_std`` and ``target_mean`` undone); classification ``(B,)`` global
        class ids; class-incremental segmentation ``(B, *spatial)`` global class ids.
    """
    with autocast:
        out = model(x, task.name).float().cpu()
    if task.kind == CISS:
        return model.heads[task.name].shared.predict(out)
    if task.kind == "segmentation":
        return out.argmax(1)
    if task.kind == "regression":
        return out * task.target_std + task.target_mean
    return global_classes(task, out.argmax(1))


def _no_answer(task: Task, x: torch.Tensor, scorer: Scorer) -> torch.Tensor:
    """What a sample sent to an incompatible task gets (see module docstring)."""
    b = x.shape[0]
    if task.kind == "segmentation":
        return torch.zeros((b,) + tuple(x.shape[2:]), dtype=torch.long)
    if task.kind == "regression":
        return torch.full((b,), float(task.target_mean))
    return torch.full((b,), scorer.none_class, dtype=torch.long)  # no class: always wrong


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
        ConfigError: ``predicted`` with a strategy that predicts no task id; ``split="val"`` on
        a task without a validation set.
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
    active = None
    if task.kind == CISS:
        view = model.heads[task.name]
        active = view.shared.active_classes(view.task_index)
    scorer = Scorer(task, stream, active)
    j = stream.index(task) if predicted else None
    hits, n, predict_s = 0, 0, 0.0
    key = None
    if task.kind == CISS and not predicted and cache is not None:
        key = ("ciss", id(dataset), tuple(active))
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
