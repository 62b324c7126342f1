"""The task abstraction shared by every stream.

A *stream* is a ``list[Task]``. A task bundles its name, its kind, its train/test datasets and
how it is scored. Every dataset item is a dict:

* ``"image"``: ``FloatTensor`` of shape ``(C, D, H, W)`` (3D) or ``(C, H, W)`` (2D), intensity-normalised;
* ``"label"``: what the task kind's row says (:attr:`cl_bench.kinds.KindSpec.label`); a
  classification task's ``Task.classes`` maps local indices to global class ids, a CISS step's
  labels are described in :mod:`cl_bench.data.ciss`.
"""

from __future__ import annotations

from collections.abc import Mapping

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from cl_bench.kinds import TaskKind, kind_spec
from cl_bench.ranges import NonNegativeInt, PositiveFloat, check_value

#: continual-learning scenarios of a classification stream (van de Ven et al. 2022,
#: "Three types of incremental learning", Nature Machine Intelligence; arXiv 1904.07734)
SCENARIOS = ("task_il", "class_il")


@dataclass
class Task:
    """One experience of a stream.

    Args:
        name: unique task name within the stream (used as adapter/head key and matrix column).
        kind: the name of a row of :data:`cl_bench.kinds.KINDS` (:data:`~cl_bench.kinds.TaskKind`).
        train: training dataset (items as described in the module docstring).
        test: evaluation dataset.
        num_classes: segmentation classes including background (0 for regression); for a CISS
            step, the classes of the whole stream including background.
        target_mean: regression target normalisation mean (native units); the model predicts
            ``(y - target_mean) / target_std`` and metrics are computed back in native units.
        target_std: regression target normalisation std (native units, > 0).
        units: unit of the task's metric, e.g. ``"years"`` for age MAE, ``""`` for Dice.
        info: free-form provenance (generator settings, file counts) written to metrics.json.
        classes: classification: the task's global class ids, in local-index order; CISS: the
            step's new foreground class ids.
        pos_weight: CISS only: weight of positive pixels in the per-class BCE (STAR's code: 4 on
            VOC, 30 on ADE20K), used by every strategy's task loss.
        stream_classes: CISS only: the foreground ids of every step of the stream, in learning
            order (the channel order of the shared classifier).
        scenario: classification only: ``"task_il"`` (a head per task, task id given at test) or
            ``"class_il"`` (one growing head over every class seen so far, no task id at test).
        val: the validation set carved from the training samples by :func:`carve_validation`
            (``tasks.n_val``), disjoint from ``train`` and ``test``; ``None`` without one.
        target_scale: regression only: a user-fixed ``target_std`` (``tasks.age_scale``), kept
            when a validation set is carved; ``None``: ``target_std`` is the training targets'
            SD and is recomputed on the carved training set.
    """

    name: str
    kind: TaskKind
    train: Dataset
    test: Dataset
    num_classes: int = 0
    target_mean: float = 0.0
    target_std: float = 1.0
    units: str = ""
    info: dict = field(default_factory=dict)
    classes: list[int] = field(default_factory=list)
    scenario: str = "task_il"
    stream_classes: list[int] = field(default_factory=list)
    pos_weight: float = 1.0
    val: Dataset | None = None
    target_scale: float | None = None

    @property
    def metric(self) -> str:
        """Metric name (:attr:`cl_bench.kinds.KindSpec.metric`).

        Raises:
            UnknownKindError: ``kind`` is not in :data:`cl_bench.kinds.KINDS`."""
        return kind_spec(self.kind).metric

    @property
    def higher_is_better(self) -> bool:
        """Direction of :attr:`metric` (:attr:`cl_bench.kinds.KindSpec.higher_is_better`).

        Raises:
            UnknownKindError: ``kind`` is not in :data:`cl_bench.kinds.KINDS`."""
        return kind_spec(self.kind).higher_is_better


class ArrayDataset(Dataset):
    """In-memory dataset over stacked arrays.

    Args:
        images: ``(N, C, *spatial)`` float array.
        labels: ``(N, 1, *spatial)`` int array (segmentation), ``(N,)`` float array (regression)
            or ``(N,)`` int array (classification).

    Raises:
        ValueError: if ``images`` and ``labels`` disagree on ``N``.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
        images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        labels = torch.as_tensor(np.asarray(labels))
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        self.images = images
        if labels.ndim > 1 or not torch.is_floating_point(labels):
            self.labels = labels.long()
        else:
            self.labels = labels.float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


def regression_scale(targets: np.ndarray, scale: float | None, key: str = "tasks.age_scale"
                     ) -> float:
    """The normalisation scale of a regression target (``Task.target_std``), native units.

    The brain-MRI study (arXiv 2602.23533) reports age MAE "on a normalised scale" without saying
    which; ours is ``MAE / scale`` (``mae_normalised``), and training regresses ``(y - mean) /
    scale``. ``scale=None`` uses the SD of the training targets (at least 1).

    Raises:
        ConfigError: ``scale`` not a finite number > 0 or None (names ``key``).
    """
    check_value(key, scale, PositiveFloat | None)
    if scale is None:
        return float(max(np.asarray(targets, dtype=np.float64).std(), 1.0))
    return float(scale)


def subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The items ``indices`` of ``dataset``, in that order: an :class:`ArrayDataset` of the
    selected rows (keeps the fast stacked-tensor path) or a ``torch.utils.data.Subset``."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    if isinstance(dataset, ArrayDataset):
        return ArrayDataset(dataset.images[idx], dataset.labels[idx])
    return torch.utils.data.Subset(dataset, idx.tolist())


def carve_validation(stream: list[Task], n_val: int, seed: int,
                     by_task: Mapping[str, int] | None = None) -> list[Task]:
    """Hold out ``n_val`` training samples of every task as its validation set (in place).

    The validation samples are drawn without replacement from each task's training set by a
    generator seeded with ``(seed, task index)``: the same seed gives the same split, and they are
    disjoint from the task's new training set and (as the training set was) from its test set.
    Validation is what a run may choose on (a head, a learning rate, a step count); the test set
    only produces the reported R. A regression task's target normalisation (``target_mean`` and,
    unless ``target_scale`` fixes it, ``target_std``) is recomputed on the remaining training
    targets, so no validation label enters training.

    Args:
        stream: the tasks, as built by a stream factory (``task.val`` is set here).
        n_val: validation samples per task (0: nothing changes).
        seed: the run's ``seed``.
        by_task: ``{task name: validation samples}`` for tasks that differ from ``n_val``
            (``tasks.n_val_by_task``; e.g. a regression task whose MAE needs more subjects to
            choose on than a segmentation task's Dice).

    Returns:
        ``stream`` itself.

    Raises:
        ConfigError: ``n_val`` not an int >= 0, or not smaller than a task's training set
        (names ``tasks.n_val`` and the task); a ``by_task`` name that is no task of the stream
        or a bad value (names ``tasks.n_val_by_task.<name>``).
    """
    from cl_bench.errors import ConfigError

    check_value("tasks.n_val", n_val, NonNegativeInt)
    by_task = dict(by_task or {})
    names = [task.name for task in stream]
    for name, value in by_task.items():
        if name not in names:
            raise ConfigError(f"tasks.n_val_by_task.{name}: no task {name!r} in the stream "
                              f"(its tasks: {names})")
        check_value(f"tasks.n_val_by_task.{name}", value, NonNegativeInt)
    for t, task in enumerate(stream):
        n = len(task.train)
        n_task = int(by_task.get(task.name, n_val))
        key = f"tasks.n_val_by_task.{task.name}" if task.name in by_task else "tasks.n_val"
        if n_task == 0:
            continue
        if n_task >= n:
            raise ConfigError(f"{key} ({n_task}) must be smaller than task {task.name!r}'s "
                              f"{n} training samples (it is carved from them)")
        order = np.random.default_rng([int(seed), t, 2024]).permutation(n)
        task.val = subset(task.train, np.sort(order[:n_task]))
        task.train = subset(task.train, np.sort(order[n_task:]))
        task.info = {**task.info, "n_val": n_task, "n_train_after_val": n - n_task}
        if kind_spec(task.kind).normalised_target:
            targets = np.asarray([float(task.train[i]["label"]) for i in range(len(task.train))])
            task.target_mean = float(targets.mean())
            task.target_std = regression_scale(targets, task.target_scale)
    return stream
