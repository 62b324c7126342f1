"""The task kinds: one table row (:class:`KindSpec`) per kind of task, in place of string branches.

Everything that differs between a segmentation, a regression, a classification and a
class-incremental segmentation task is looked up here by ``task.kind``
(:func:`kind_spec`): the metric and its direction, the loss, the scorer, the head family, how
the head's output becomes a prediction, what a sample nobody can answer gets. Code elsewhere
asks the table (``kind_spec(task.kind).loss(task, ...)``) instead of branching on the kind's
name; adding a kind is adding a row (docs/architecture.md §9).

Floor 1 (docs/architecture.md §2): this module imports only floor-0 modules (``errors``,
``metrics``) and third-party libraries (torch; MONAI and torchmetrics inside the factories, so
importing :mod:`cl_bench.data` stays light). Heads are built from encoder-specific classes on
floor 2, so a row names its head *family* (:attr:`KindSpec.head`) and each backbone family has a
builder per head family (``build_<family>`` of its ``HeadFactory``,
:mod:`cl_bench.models.continual`). A task is
duck-typed here (``task.kind``, ``task.num_classes``, ...): :mod:`cl_bench.data.base` imports
this module, not the reverse.

Metrics (what :class:`TaskScorer` computes):

* Dice: MONAI ``DiceMetric`` (Dice 1945; as used for BraTS, Menze et al. 2015) on argmax
  one-hot predictions, background excluded, subjects whose ground truth lacks a label are
  ignored for that label; the task's value is the mean over foreground labels of the mean over
  subjects.
* MAE: torchmetrics ``MeanAbsoluteError`` in the target's native units (years for brain age).
* accuracy: torchmetrics ``MulticlassAccuracy`` (micro: share of correctly classified images).
* mIoU (class-incremental segmentation): a torchmetrics ``MulticlassConfusionMatrix`` over the
  whole test set, IoU per class (:func:`cl_bench.metrics.iou_from_confusion`). Pixels of classes
  the model has no active output for yet, and 255, are ignored (as MiB's and STAR's evaluators
  do). A step's value in R is the mean IoU of its classes (step 0: plus background); the row's
  other values (``miou_base``, ``miou_new``, ...) go to the details (:class:`MIoUScorer`).

Losses (what :attr:`KindSpec.loss` builds; :class:`cl_bench.models.losses.TaskLoss` wraps them):

* segmentation: MONAI ``DiceCELoss`` (softmax, one-hot targets, Dice over the foreground classes
  only since tumours fill ~2 % of a volume; Milletari et al. 2016, arXiv 1606.04797 for the Dice
  loss), optionally with median-frequency class weights (``train.class_weights=median_frequency``,
  :func:`median_frequency_weights`: ``w_c = median_k f_k / f_c``, f the classes' voxel frequencies
  in the task's training labels; Eigen & Fergus 2015, arXiv 1411.4734), given to MONAI's
  ``weight`` (the cross-entropy over every class, the Dice over the foreground);
* regression: the mean squared error on the normalised target
  ``(y - task.target_mean) / task.target_std``;
* classification: the cross-entropy;
* class-incremental segmentation: STAR's per-class binary cross-entropy (:func:`ciss_bce`;
  Chen et al., NeurIPS 2023): a sigmoid per foreground class, the target of class c is
  ``label == c`` (so old and future classes, labelled background in the step's data, are pushed
  to 0: the background shift that makes plain fine-tuning forget), summed over classes and
  averaged over the pixels that are not :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from cl_bench.errors import ConfigError, DataError
from cl_bench.metrics import iou_from_confusion, mean_iou

#: the names of the task kinds (``Task.kind``), one per row of :data:`KINDS`, in its order; a type
#: checker checks ``Task.kind`` and each row's ``name`` against it (tests/test_kinds.py: no row
#: missing)
TaskKind = Literal["segmentation", "regression", "classification",
                   "class_incremental_segmentation"]

#: the task kind of a class-incremental semantic segmentation step
CISS: TaskKind = "class_incremental_segmentation"

#: label of unlabelled pixels (PASCAL VOC's object boundaries); ignored by losses and metrics
IGNORE_INDEX = 255


class UnknownKindError(ConfigError, ValueError):
    """A task kind that is not in :data:`KINDS`; the message names it and the known kinds.

    A :class:`~cl_bench.errors.ConfigError` (the command line prints its one line) and a
    ``ValueError`` (what an unsupported kind raised before the table existed)."""


# ------------------------------------------------------------------------------------------------
# shared helpers


def global_classes(task, pred: torch.Tensor) -> torch.Tensor:
    """Map a classification head's output indices ``(B,)`` to stream-wide class ids ``(B,)``.

    Task-IL heads answer in the task's local indices (``task.classes`` gives the global ids);
    the class-IL head already answers in the stream's class space.
    """
    if task.scenario == "class_il":
        return pred
    return torch.as_tensor(task.classes, dtype=torch.long)[pred]


@contextlib.contextmanager
def cpu_counting(device: torch.device):
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


# ------------------------------------------------------------------------------------------------
# scorers: one task's metric accumulated over batches


class TaskScorer:
    """Accumulates one task's metric over batches of predictions in the task's own terms.

    ``TaskScorer(task, stream, active)`` builds the scorer of ``task``'s kind
    (:attr:`KindSpec.scorer`: :class:`DiceScorer`, :class:`MAEScorer`,
    :class:`AccuracyScorer` or :class:`MIoUScorer`).

    Args:
        task: the task scored; stream: the whole stream (the classification scorer's class
            space covers every head of it); active: for class-incremental segmentation, the
            foreground classes the model can answer now, in learning order.

    Feed :meth:`update` with :attr:`KindSpec.answer`'s predictions; :meth:`result` gives
    ``{task.metric: value, ...}``. ``metric`` is the underlying MONAI/torchmetrics object.

    Raises:
        UnknownKindError: ``task.kind`` is not in :data:`KINDS`.
    """

    def __new__(cls, task=None, stream=None, active=None):
        if cls is TaskScorer:  # the base class dispatches on the task's kind
            cls = kind_spec(getattr(task, "kind", None)).scorer
        return super().__new__(cls)  # (no arguments: copy and pickle build instances this way)

    def __init__(self, task, stream: list | None = None, active: list[int] | None = None):
        self.task = task

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch: ``pred`` as :attr:`KindSpec.answer` returns it, ``label`` as stored in
        the dataset (see :mod:`cl_bench.data.base`)."""
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        """``{task.metric: value, ...}`` over every batch so far."""
        raise NotImplementedError


class DiceScorer(TaskScorer):
    """Segmentation: MONAI ``DiceMetric`` over foreground labels (see module docstring).

    ``update``: ``pred`` ``(B, *spatial)`` class map, ``label`` ``(B, 1, *spatial)``.
    ``result``: ``{"dice": mean over foreground labels, "dice_<label>": per label}``, in [0, 1];
    NaN where no subject had the label (and ``dice`` NaN if no label was present)."""

    def __init__(self, task, stream=None, active=None):
        super().__init__(task)
        from monai.metrics import DiceMetric

        self.metric = DiceMetric(include_background=False, reduction="mean_batch",
                                 ignore_empty=True)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        k = self.task.num_classes
        self.metric(torch.nn.functional.one_hot(pred.long(), k).movedim(-1, 1),
                    torch.nn.functional.one_hot(label[:, 0].long(), k).movedim(-1, 1))

    def result(self) -> dict[str, float]:
        per_label = self.metric.aggregate()  # (K-1,), NaN where no subject had the label
        valid = per_label[~torch.isnan(per_label)]
        out = {"dice": float(valid.mean()) if len(valid) else float("nan")}
        out.update({f"dice_{i}": v for i, v in enumerate(per_label.tolist(), start=1)})
        return out


class MAEScorer(TaskScorer):
    """Regression: torchmetrics ``MeanAbsoluteError`` in native units (e.g. years).

    ``update``: ``pred`` ``(B,)`` native units, ``label`` ``(B,)`` native units.
    ``result``: ``{"mae", "mae_normalised": mae / task.target_std, "mae_mean_predictor": the MAE
    of always answering the training mean task.target_mean}``."""

    def __init__(self, task, stream=None, active=None):
        super().__init__(task)
        from torchmetrics.regression import MeanAbsoluteError

        self.metric = MeanAbsoluteError()
        self.baseline = MeanAbsoluteError()  # the mean predictor: always target_mean

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        self.metric.update(pred, label.float())
        self.baseline.update(torch.full_like(label.float(), self.task.target_mean), label.float())

    def result(self) -> dict[str, float]:
        mae = float(self.metric.compute())
        return {"mae": mae, "mae_normalised": mae / self.task.target_std,
                "mae_mean_predictor": float(self.baseline.compute())}


class AccuracyScorer(TaskScorer):
    """Classification: torchmetrics ``MulticlassAccuracy`` (micro) in the stream's global class
    space, plus one class ``none_class`` that no label has (the answer of a sample no compatible
    head could take: always wrong).

    ``update``: ``pred`` ``(B,)`` global class ids, ``label`` ``(B,)`` as stored (local indices
    in a task-IL stream, mapped by :func:`global_classes`). ``result``: ``{"accuracy"}`` in
    [0, 1]."""

    def __init__(self, task, stream=None, active=None):
        super().__init__(task)
        from torchmetrics.classification import MulticlassAccuracy

        # every global class id a head of the stream can answer
        n = max([task.num_classes] + [max(t.classes) + 1 for t in (stream or [task])
                                      if t.kind == task.kind and t.classes])
        self.none_class = n  # the answer of a sample no compatible head could take
        self.metric = MulticlassAccuracy(num_classes=n + 1, average="micro")

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        with cpu_counting(pred.device):
            self.metric.update(pred, global_classes(self.task, label.long()))

    def result(self) -> dict[str, float]:
        return {"accuracy": float(self.metric.compute())}


class MIoUScorer(TaskScorer):
    """Class-incremental segmentation: a torchmetrics ``MulticlassConfusionMatrix`` over the
    whole test set, IoU per class (:func:`cl_bench.metrics.iou_from_confusion`); ground truth of
    classes outside ``active`` (and :data:`IGNORE_INDEX`) is ignored.

    ``update``: ``pred`` ``(B, *spatial)`` global class ids, ``label`` ``(B, 1, *spatial)``.
    ``result``: ``miou`` (the step's classes; step 0 also background), ``miou_base``
    (background + step-0 classes: STAR's "old"), ``miou_new`` (classes of later steps),
    ``miou_all`` and ``iou_<c>`` per active class, in [0, 1]."""

    def __init__(self, task, stream=None, active=None):
        super().__init__(task)
        from torchmetrics.classification import MulticlassConfusionMatrix

        # active: the foreground classes the model can answer now, in learning order
        self.active = list(active or [])
        self.metric = MulticlassConfusionMatrix(num_classes=task.num_classes,
                                                ignore_index=IGNORE_INDEX)
        lut = torch.full((max(task.num_classes, IGNORE_INDEX + 1),), IGNORE_INDEX)
        lut[[0] + self.active] = torch.as_tensor([0] + self.active)
        self.lut = lut  # ground truth id -> itself if answerable, else ignored

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        with cpu_counting(pred.device):
            self.metric.update(pred.long(), self.lut[label[:, 0].long()])

    def result(self) -> dict[str, float]:
        task = self.task
        iou = iou_from_confusion(self.metric.compute().numpy())
        own = ([0] if task.info["step"] == 0 else []) + list(task.classes)
        base = [0] + task.stream_classes[:task.info["n_base"]]
        new = [c for c in self.active if c not in base]
        out = {"miou": mean_iou(iou, own), "miou_base": mean_iou(iou, base),
               "miou_new": mean_iou(iou, new), "miou_all": mean_iou(iou, [0] + self.active)}
        out.update({f"iou_{c}": float(iou[c]) for c in [0] + self.active})
        return out


# ------------------------------------------------------------------------------------------------
# losses: the model's raw output and the stored label -> a 0-d loss


def median_frequency_weights(task) -> torch.Tensor:
    """Median-frequency class weights (Eigen & Fergus 2015, arXiv 1411.4734) of a segmentation
    task: ``(K,)`` float, ``w_c = median_k f_k / f_c``, f_c the share of class c among the
    voxels of the task's training labels (a class absent from them gets weight 1).

    Raises:
        DataError: a label outside ``[0, task.num_classes)``.
    """
    k = task.num_classes
    counts = torch.zeros(k, dtype=torch.float64)
    labels = getattr(task.train, "labels", None)
    chunks = ([labels] if isinstance(labels, torch.Tensor)
              else (task.train[i]["label"] for i in range(len(task.train))))
    for lab in chunks:
        lab = torch.as_tensor(lab).flatten().long()
        if len(lab) and (lab.min() < 0 or lab.max() >= k):
            raise DataError(f"task {task.name!r}: a training label outside [0, {k})")
        counts += torch.bincount(lab, minlength=k).double()
    freq = counts / counts.sum()
    present = freq > 0
    weight = torch.ones(k, dtype=torch.float64)
    weight[present] = freq[present].median() / freq[present]
    return weight.float()


def bce_per_class(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                  pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over positions, per class.

    Args:
        logits, target: ``(N, C, *any)``; valid: ``None`` or a 0/1 mask broadcastable to them
            (positions outside it are left out); pos_weight: weight of positive targets.

    Returns:
        ``(C,)``.
    """
    pw = None
    if pos_weight is not None:
        pw = torch.full((logits.shape[1],) + (1,) * (logits.dim() - 2), float(pos_weight),
                        device=logits.device)
    bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                         reduction="none", pos_weight=pw)
    dims = [d for d in range(bce.dim()) if d != 1]
    if valid is None:
        return bce.mean(dim=dims)
    v = valid.float().expand_as(bce)
    return (bce * v).sum(dim=dims) / v.sum(dim=dims).clamp_min(1)


def ciss_bce(logits: torch.Tensor, label: torch.Tensor, class_ids: list[int],
             pos_weight: float = 1.0) -> torch.Tensor:
    """STAR's per-class BCE (0-d): ``sum_c mean_pixels BCE(logit_c, label == c)``.

    Args:
        logits: ``(B, K, *spatial)``; label: ``(B, 1, *spatial)`` global ids (255 ignored);
        class_ids: the class of each channel (K ids); pos_weight: weight of positive pixels
            (STAR: 4 on VOC's 21 classes; 1 = plain BCE).
    """
    ids = torch.as_tensor(class_ids, device=label.device).view(1, -1, *[1] * (label.dim() - 2))
    return bce_per_class(logits, label == ids, label != IGNORE_INDEX, pos_weight).sum()


class DiceCE(nn.Module):
    """Segmentation loss: MONAI ``DiceCELoss`` (softmax, one-hot targets, Dice over the
    foreground classes); ``class_weights="median_frequency"`` gives it
    :func:`median_frequency_weights` (MONAI's ``weight``: the cross-entropy over every class,
    the Dice over the foreground).

    Shapes: ``out`` ``(B, K, *spatial)`` logits (bf16 logits: the loss in fp32), ``label``
    ``(B, 1, *spatial)`` int -> 0-d.

    Raises:
        DataError: median-frequency weights of a label outside ``[0, task.num_classes)``.
    """

    def __init__(self, task, class_weights: str = "none"):
        super().__init__()
        from monai.losses import DiceCELoss

        weight = median_frequency_weights(task) if class_weights == "median_frequency" else None
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                  weight=weight)

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.dice_ce(out.float(), label)  # bf16 logits: the loss in fp32


class NormalisedMSE(nn.Module):
    """Regression loss: MSE of ``out`` ``(B,)`` (normalised scale) against
    ``(label - task.target_mean) / task.target_std``, ``label`` ``(B,)`` in native units."""

    def __init__(self, task, class_weights: str = "none"):
        super().__init__()
        self.target_mean, self.target_std = task.target_mean, task.target_std

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = (label.float() - self.target_mean) / self.target_std
        return nn.functional.mse_loss(out.float(), target)


class CrossEntropy(nn.Module):
    """Classification loss: cross-entropy of ``out`` ``(B, K)`` logits against ``label`` ``(B,)``
    class indices (the head's index space), in fp32."""

    def __init__(self, task, class_weights: str = "none"):
        super().__init__()

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out.float(), label.long())


class CISSBCE(nn.Module):
    """Class-incremental segmentation loss: :func:`ciss_bce` of ``out`` ``(B, K, *spatial)``
    per-class logits (channel k = class ``task.stream_classes[k]``) against ``label``
    ``(B, 1, *spatial)`` global ids, with ``task.pos_weight``."""

    def __init__(self, task, class_weights: str = "none"):
        super().__init__()
        self.class_ids, self.pos_weight = task.stream_classes, task.pos_weight

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return ciss_bce(out, label, self.class_ids, self.pos_weight)


# ------------------------------------------------------------------------------------------------
# answers: a head's output -> a prediction in the scorer's terms


def _answer_segmentation(model, task, out: torch.Tensor) -> torch.Tensor:
    return out.argmax(1)


def _answer_regression(model, task, out: torch.Tensor) -> torch.Tensor:
    return out * task.target_std + task.target_mean


def _answer_classification(model, task, out: torch.Tensor) -> torch.Tensor:
    return global_classes(task, out.argmax(1))


def _answer_ciss(model, task, out: torch.Tensor) -> torch.Tensor:
    return model.heads[task.name].shared.predict(out)


def _background(task, x: torch.Tensor, scorer) -> torch.Tensor:
    return torch.zeros((x.shape[0],) + tuple(x.shape[2:]), dtype=torch.long)


def _mean_target(task, x: torch.Tensor, scorer) -> torch.Tensor:
    return torch.full((x.shape[0],), float(task.target_mean))


def _no_class(task, x: torch.Tensor, scorer) -> torch.Tensor:
    return torch.full((x.shape[0],), scorer.none_class, dtype=torch.long)  # always wrong


def _not_routable(task, x: torch.Tensor, scorer) -> torch.Tensor:
    raise ConfigError(f"eval.task_id=predicted: task {task.name!r} is a class-incremental "
                      "segmentation step, which has no per-sample task id; use "
                      "eval.task_id=oracle")


def _mean_predictor(task, scores: dict, stream) -> dict[str, float]:
    value = scores.get("mae_mean_predictor")
    return {} if value is None else {"mean_predictor": float(value)}


def _chance(task, scores: dict, stream) -> dict[str, float]:
    if task.scenario == "class_il":  # one head over every class of the stream
        classes = {c for t in (stream or [task]) if t.kind == task.kind for c in t.classes}
        k = len(classes) or task.num_classes
    else:
        k = len(task.classes) or task.num_classes
    return {"chance": 1.0 / k, "classes": k} if k else {}


def _no_baseline(task, scores: dict, stream) -> dict[str, float]:
    return {}


def _same_classes(a, b) -> bool:
    return a.num_classes == b.num_classes


def _always(a, b) -> bool:
    return True


# ------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class KindSpec:
    """Everything that depends on a task's kind (one row of :data:`KINDS`).

    Attributes:
        name: the kind, as in ``Task.kind``.
        metric: the name of the metric in R (``Task.metric``): ``dice``, ``mae``, ``accuracy``,
            ``miou``.
        higher_is_better: the metric's direction (Dice, accuracy, mIoU ↑; MAE ↓).
        label: what a dataset item's ``label`` holds (shape, dtype, units).
        normalised_target: the model regresses ``(y - task.target_mean) / task.target_std``;
            both are recomputed when a validation set is carved
            (:func:`cl_bench.data.base.carve_validation`).
        head: the head family a backbone builds for the kind (``decoder``: per-voxel logits;
            ``regressor``: one scalar; ``classifier``: class logits; ``ciss``: the growing
            per-class sigmoid classifier), built by ``HeadFactory.build_<head>`` in
            :mod:`cl_bench.models.continual`.
        shared_head: ``shared_head(task)``: does ``task`` share one growing head with the other
            tasks of its kind in the stream (class-IL classification, CISS steps) instead of
            having its own?
        active_classes: the kind's scorer needs the classes the shared head can answer now
            (``head.shared.active_classes``), and its steps share one test set, so a row's
            scores are cached per active class set (:func:`cl_bench.evaluation.evaluate_task`).
        loss: ``loss(task, class_weights) -> nn.Module`` mapping ``(out, label)`` to a 0-d loss
            (see the module docstring for each kind's loss and its source).
        scorer: the :class:`TaskScorer` subclass: ``scorer(task, stream, active)``.
        answer: ``answer(model, task, out) -> prediction``: the head's float output ``out`` (on
            the CPU) in the scorer's terms (class map, native units, global class ids).
        no_answer: ``no_answer(task, x, scorer) -> prediction`` for the ``B = x.shape[0]``
            samples of ``x`` ``(B, C, *spatial)`` that no compatible head can answer (all
            background, the training mean, a class no label has); raises ``ConfigError`` for a
            kind without per-sample task ids.
        compatible: ``compatible(a, b)`` for two tasks of this kind: can ``a``'s head answer
            a sample of ``b`` in ``b``'s terms?
        baseline: ``baseline(task, scores, stream) -> dict``: the score a model that learned
            nothing gets on ``task``, in the metric's units, from ``scores`` (the task's
            :meth:`TaskScorer.result`) and the stream: regression ``{"mean_predictor": MAE of
            always answering the training mean}``; classification ``{"chance": 1/k,
            "classes": k}`` (a uniform guess among k classes: the task's own under task-IL, every
            class of the stream under class-IL); ``{}`` where no such baseline is defined
            (Dice, mIoU). See :func:`task_baselines`.
    """

    name: TaskKind
    metric: str
    higher_is_better: bool
    label: str
    normalised_target: bool
    head: str
    shared_head: Callable[..., bool]
    active_classes: bool
    loss: Callable[..., nn.Module]
    scorer: type[TaskScorer]
    answer: Callable[..., torch.Tensor]
    no_answer: Callable[..., torch.Tensor]
    compatible: Callable[..., bool]
    baseline: Callable[..., dict] = _no_baseline


#: every task kind, by ``Task.kind``; the order is the order shared heads are built in
KINDS: dict[TaskKind, KindSpec] = {spec.name: spec for spec in (
    KindSpec(name="segmentation", metric="dice", higher_is_better=True,
             label="LongTensor (1, *spatial), values in [0, num_classes), 0 = background",
             normalised_target=False, head="decoder", shared_head=lambda task: False,
             active_classes=False, loss=DiceCE, scorer=DiceScorer,
             answer=_answer_segmentation, no_answer=_background, compatible=_same_classes),
    KindSpec(name="regression", metric="mae", higher_is_better=False,
             label="0-d FloatTensor in native units (years for brain age)",
             normalised_target=True, head="regressor", shared_head=lambda task: False,
             active_classes=False, loss=NormalisedMSE, scorer=MAEScorer,
             answer=_answer_regression, no_answer=_mean_target, compatible=_always,
             baseline=_mean_predictor),
    KindSpec(name="classification", metric="accuracy", higher_is_better=True,
             label="0-d LongTensor: local index (task_il) or global class id (class_il)",
             normalised_target=False, head="classifier",
             shared_head=lambda task: task.scenario == "class_il",
             active_classes=False, loss=CrossEntropy, scorer=AccuracyScorer,
             answer=_answer_classification, no_answer=_no_class, compatible=_always,
             baseline=_chance),
    KindSpec(name=CISS, metric="miou", higher_is_better=True,
             label="LongTensor (1, H, W) of global class ids, the step's classes only "
                   "(0 = background, 255 = unlabelled)",
             normalised_target=False, head="ciss", shared_head=lambda task: True,
             active_classes=True, loss=CISSBCE, scorer=MIoUScorer,
             answer=_answer_ciss, no_answer=_not_routable, compatible=_always),
)}


def kind_spec(kind: str) -> KindSpec:
    """The :class:`KindSpec` of ``kind`` (a ``Task.kind``).

    Raises:
        UnknownKindError: ``kind`` is not in :data:`KINDS` (the message names it and the known
        kinds).
    """
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise UnknownKindError(
            f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)} (cl_bench/kinds.py; "
            "docs/architecture.md §9 says how to add one)") from None


def task_baselines(stream: list, details: dict) -> dict[str, dict[str, float]]:
    """Each task's baseline (:attr:`KindSpec.baseline`): what metrics.json keeps as
    ``baselines``.

    Args:
        stream: the tasks; details: ``{row: {task: every score of the row}}`` (metrics.json's
            ``details``; one row ``{"init": {...}}`` will do): the mean predictor's MAE is read
            from the last row that has the task (it depends on the test set only, so every
            row holds the same value).

    Returns:
        ``{task name: {"mean_predictor": MAE}}`` for a regression task,
        ``{task name: {"chance": 1/k, "classes": k}}`` for a classification task; tasks without
        a baseline (segmentation, CISS) are left out.

    Raises:
        UnknownKindError: a task's kind is not in :data:`KINDS`.
    """
    rows = list(details.values())
    out = {}
    for task in stream:
        scores = next((row[task.name] for row in reversed(rows) if task.name in (row or {})), {})
        found = kind_spec(task.kind).baseline(task, scores, stream)
        if found:
            out[task.name] = found
    return out
