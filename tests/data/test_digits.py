"""Split-digit streams: label spaces per scenario, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_bench.data.digits import make_digits, make_split_mnist, split_stream
from cl_bench.errors import ConfigError, DataError


def toy(n_per_class: int = 6, n_classes: int = 4):
    """Images whose every pixel equals the class id (so we can trace where each image went)."""
    labels = np.repeat(np.arange(n_classes), n_per_class)
    images = np.broadcast_to(labels[:, None, None], (len(labels), 3, 3)).astype(np.float32)
    return images, labels


def test_task_il_labels_are_local_and_class_il_global():
    images, labels = toy()
    til = split_stream(images, labels, "toy", "toy", "task_il", 2, 2, n_test_per_class=2)
    cil = split_stream(images, labels, "toy", "toy", "class_il", 2, 2, n_test_per_class=2)
    assert [t.name for t in til] == ["toy_0_1", "toy_2_3"]
    assert [t.classes for t in til] == [[0, 1], [2, 3]]
    assert [t.num_classes for t in til] == [2, 2] and [t.num_classes for t in cil] == [4, 4]
    for t_til, t_cil in zip(til, cil):
        assert len(t_til.train) == 8 and len(t_til.test) == 4  # 4 train + 2 test per class
        assert set(t_til.train.labels.tolist()) == {0, 1}
        assert set(t_cil.train.labels.tolist()) == set(t_cil.classes)
        assert t_til.train.labels.dtype == torch.long
    # the image of a local label k is the class classes[k]: raw pixel = class id before scaling
    t = til[1]
    raw = t.train.images[:, 0, 0, 0].numpy()
    order = np.argsort(raw)
    assert (t.train.labels.numpy()[order] == np.sort(t.train.labels.numpy())).all()


def test_class_order_and_task_shift():
    images, labels = toy()
    a = split_stream(images, labels, "toy", "toy", "class_il", 2, 2, class_order=[3, 1, 0, 2],
                     n_test_per_class=2)
    assert [t.classes for t in a] == [[3, 1], [0, 2]]
    assert set(a[0].train.labels.tolist()) == {0, 1}  # class_il renumbers in class_order
    b = split_stream(images, labels, "toy", "toy", "task_il", 2, 2, n_test_per_class=2,
                     task_shift=3.0)
    c = split_stream(images, labels, "toy", "toy", "task_il", 2, 2, n_test_per_class=2)
    assert torch.allclose(b[1].train.images, c[1].train.images + 3.0)
    assert torch.equal(b[0].train.images, c[0].train.images)


@pytest.mark.parametrize("kwargs, key", [
    ({"scenario": "domain_il"}, "tasks.scenario"),
    ({"n_tasks": 3}, "tasks.n_tasks x tasks.classes_per_task: 3 tasks"),
    ({"class_order": [0, 0, 1, 2]}, "tasks.class_order"),
    ({"classes_per_task": 1}, "tasks.classes_per_task"),
])
def test_bad_split_names_the_key(kwargs, key):
    images, labels = toy()
    args = dict(scenario="task_il", n_tasks=2, classes_per_task=2, n_test_per_class=2) | kwargs
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        split_stream(images, labels, "toy", "toy", **args)


def test_too_few_images_is_a_data_error():
    images, labels = toy(n_per_class=3)
    with pytest.raises(DataError, match="class 0 has 3 images"):
        split_stream(images, labels, "toy", "toy", n_tasks=2, n_test_per_class=3)


def test_real_digit_streams():
    digits = make_digits()
    assert len(digits) == 3 and digits[0].train[0]["image"].shape == (1, 8, 8)
    assert abs(float(torch.cat([t.train.images for t in digits]).mean())) < 0.05  # standardised
    mnist = make_split_mnist(scenario="class_il")
    assert [t.classes for t in mnist] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert all(len(t.train) == 800 and len(t.test) == 200 for t in mnist)
    assert mnist[0].train[0]["image"].shape == (1, 28, 28)
    assert set(mnist[4].test.labels.tolist()) == {8, 9}
