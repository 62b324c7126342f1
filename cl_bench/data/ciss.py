"""Class-incremental semantic segmentation (CISS) streams: protocols, settings, label remapping.

A CISS stream learns the foreground classes of a dataset in *steps*: the protocol ``"A-B"``
learns A classes first, then B new classes per step until all are learned (``15-5`` on VOC's 20
classes: 2 steps; ``15-1``: 6 steps). Each step's training images are labelled for that step's
classes only: old and future classes are background (the "background shift"). Which images a
step may use depends on the setting (Cermelli et al. 2020, MiB, arXiv 2002.00718, §4, the
convention of later CISS papers including STAR: Chen et al., "Saving 100x Storage: Prototype
Replay ...", NeurIPS 2023, and "Replay Without Saving ...", IEEE TPAMI 2025; code
github.com/jinpeng0528/STAR):

* ``disjoint``: images holding at least one current class and no *future* class (old classes
  may appear, labelled background);
* ``overlapped``: images holding at least one current class; any other class may appear,
  labelled background.

Pixels labelled :data:`~cl_bench.data.base.IGNORE_INDEX` (255, VOC's object boundaries) stay
ignored in every step. The test set is shared by all steps and keeps every label; evaluation
after step t ignores pixels of classes not learned yet (as MiB's and STAR's evaluators do, which
map unseen classes to 255), see :mod:`cl_bench.evaluation`.

Every step is a :class:`~cl_bench.data.base.Task` of kind ``"class_incremental_segmentation"``
whose ``classes`` are the step's new foreground ids and whose ``num_classes`` is the stream's
total (background included).
"""

from __future__ import annotations

import re
import typing
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.kinds import CISS, IGNORE_INDEX
from cl_bench.ranges import PositiveFloat, checked

#: which images a step trains on (:func:`step_images`)
Setting = Literal["overlapped", "disjoint"]
SETTINGS = typing.get_args(Setting)


def protocol_steps(protocol: str, n_classes: int, class_order: list[int] | None = None,
                   key: str = "tasks.protocol") -> list[list[int]]:
    """The foreground class ids learned at each step of protocol ``"A-B"``.

    Args:
        protocol: ``"A-B"``: A classes in step 0, then B per step (A + kB = ``n_classes``).
        n_classes: foreground classes of the dataset (ids ``1..n_classes``).
        class_order: the order in which classes are learned (default ``1..n_classes``).

    Returns:
        ``[[ids of step 0], [ids of step 1], ...]``.

    Raises:
        ConfigError: a malformed protocol, one that does not split ``n_classes`` evenly, or a
        class order that is not a permutation of ``1..n_classes`` (names ``key``).
    """
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(protocol))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ConfigError(f"{key}: expected 'A-B' (A base classes, then B per step), "
                          f"got {protocol!r}")
    base, inc = int(m.group(1)), int(m.group(2))
    if base >= n_classes or (n_classes - base) % inc:
        raise ConfigError(f"{key}={protocol}: {n_classes} foreground classes cannot be split "
                          f"into {base} base classes and steps of {inc}")
    order = list(range(1, n_classes + 1)) if class_order is None else [int(c) for c in class_order]
    if sorted(order) != list(range(1, n_classes + 1)):
        raise ConfigError(f"tasks.class_order: expected a permutation of 1..{n_classes}, "
                          f"got {list(class_order)}")
    steps = [order[:base]]
    for start in range(base, n_classes, inc):
        steps.append(order[start:start + inc])
    return steps


@checked("tasks")
def step_images(present: list[set[int]], steps: list[list[int]], t: int,
                setting: Setting) -> np.ndarray:
    """Indices of the images step ``t`` trains on.

    Args:
        present: per image, the set of foreground class ids in its mask (background and
            :data:`IGNORE_INDEX` excluded).
        steps: :func:`protocol_steps` output; t: the step; setting: ``overlapped`` or ``disjoint``.

    Returns:
        ``(n,)`` int64 indices, ascending.

    Raises:
        ConfigError: an unknown setting (``tasks.setting``).
    """
    current = set(steps[t])
    future = {c for s in steps[t + 1:] for c in s}
    keep = [i for i, cls in enumerate(present)
            if cls & current and (setting == "overlapped" or not cls & future)]
    return np.asarray(keep, dtype=np.int64)


def remap_labels(mask: torch.Tensor, keep: set[int] | list[int]) -> torch.Tensor:
    """Keep the ids in ``keep``; every other class becomes background 0; 255 stays 255.

    Args:
        mask: int tensor of any shape holding global class ids.
    """
    keep_t = torch.as_tensor(sorted(set(keep)) + [IGNORE_INDEX], dtype=mask.dtype)
    return torch.where(torch.isin(mask, keep_t), mask, torch.zeros_like(mask))


class SegStepDataset(Dataset):
    """One step's view of a segmentation dataset: selected images, labels remapped.

    Args:
        images: ``(N, C, H, W)`` float tensor (shared, not copied).
        masks: ``(N, 1, H, W)`` int tensor of global class ids (shared, not copied).
        index: the images of this view (``None``: all).
        keep: the class ids kept in the labels (``None``: all, as for the test set).

    Items: ``{"image": (C, H, W) float, "label": (1, H, W) long}``.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor,
                 index: np.ndarray | None = None, keep: list[int] | None = None):
        self.images, self.masks = images, masks
        self.index = np.arange(len(images)) if index is None else np.asarray(index)
        self.keep = None if keep is None else sorted(set(int(c) for c in keep))

    def with_classes(self, keep: list[int] | None,
                     index: np.ndarray | None = None) -> "SegStepDataset":
        """The same images (or those of ``index``) labelled for ``keep`` (e.g. every class seen
        so far, for joint), as a dataset of the same type."""
        return type(self)(self.images, self.masks, self.index if index is None else index, keep)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.index[i])
        label = self.masks[j].long()
        if self.keep is not None:
            label = remap_labels(label, self.keep)
        return {"image": self.images[j].float(), "label": label}


def present_classes(masks: torch.Tensor) -> list[set[int]]:
    """Per mask ``(N, 1, H, W)``: the set of foreground ids it holds (0 and 255 excluded)."""
    out = []
    for m in masks:
        ids = set(torch.unique(m).tolist())
        out.append(ids - {0, IGNORE_INDEX})
    return out


@checked("tasks")
def ciss_stream(train_images: torch.Tensor, train_masks: torch.Tensor,
                test_images: torch.Tensor, test_masks: torch.Tensor, n_classes: int,
                protocol: str, setting: Setting, name: str, class_order: list[int] | None = None,
                info: dict | None = None, pos_weight: PositiveFloat = 4.0,
                dataset: type[SegStepDataset] = SegStepDataset) -> list[Task]:
    """Cut a labelled segmentation dataset into the steps of a CISS protocol.

    Args:
        train_images, test_images: ``(N, C, H, W)`` float tensors.
        train_masks, test_masks: ``(N, 1, H, W)`` int tensors of ids ``0..n_classes`` or 255.
        n_classes: foreground classes; protocol, setting, class_order: see
            :func:`protocol_steps`, :func:`step_images`; name: the stream's name (steps are
            ``<name>_s<k>``); info: provenance copied into every task; pos_weight: weight of
            positive pixels in the per-class BCE (``Task.pos_weight``; STAR on VOC: 4);
            dataset: the :class:`SegStepDataset` type of the views (e.g. one that normalises
            stored ``uint8`` images per item).

    Returns:
        One task per step; every step shares the test set (all labels kept).

    Raises:
        ConfigError: bad protocol / setting / order, a non-positive pos_weight, or a step left
        without training images.
    """
    steps = protocol_steps(protocol, n_classes, class_order)
    present = present_classes(train_masks)
    test = dataset(test_images, test_masks)
    tasks = []
    for t, classes in enumerate(steps):
        idx = step_images(present, steps, t, setting)
        if len(idx) == 0:
            raise ConfigError(f"tasks.protocol={protocol} tasks.setting={setting}: step {t} "
                              f"(classes {classes}) has no training image; use more images or "
                              "the overlapped setting")
        tasks.append(Task(
            name=f"{name}_s{t}", kind=CISS,
            train=dataset(train_images, train_masks, idx, classes), test=test,
            num_classes=n_classes + 1, classes=list(classes), scenario="class_il",
            stream_classes=[c for s in steps for c in s], pos_weight=float(pos_weight),
            info=dict(info or {}, protocol=protocol, setting=setting, step=t, n_base=len(steps[0]),
                      n_train=len(idx), n_test=len(test_images))))
    return tasks
