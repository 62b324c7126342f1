"""The task-kinds table (cl_bench/kinds.py): every row complete, unknown kinds refused with one
clear error, and each row's parts doing what the string branches they replaced did."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cl_bench.data.base import ArrayDataset, Task
from cl_bench.errors import ConfigError
from cl_bench.evaluation import _compatible, _no_answer
from cl_bench.kinds import (CISS, KINDS, AccuracyScorer, DiceScorer, KindSpec, MAEScorer,
                            MIoUScorer, TaskKind, TaskScorer, UnknownKindError, kind_spec)
from cl_bench.models.backbones import ViTHeads
from cl_bench.models.continual import HeadFactory
from cl_bench.models.losses import TaskLoss


def test_every_kind_has_every_field_set():
    assert set(KINDS) == {"segmentation", "regression", "classification", CISS}
    for name, spec in KINDS.items():
        assert isinstance(spec, KindSpec) and spec.name == name
        for f in dataclasses.fields(KindSpec):
            value = getattr(spec, f.name)
            assert value is not None and value != "", f"{name}: {f.name} is not set"
        for f in ("shared_head", "loss", "answer", "no_answer", "compatible"):
            assert callable(getattr(spec, f)), f"{name}: {f} is not callable"
        assert issubclass(spec.scorer, TaskScorer) and spec.scorer is not TaskScorer
        # each head family has a builder every backbone family has (refusing unless it can)
        assert callable(getattr(HeadFactory, f"build_{spec.head}", None)), f"{name}: no builder"


def test_shared_head_families_have_a_shared_builder():
    shared = {s.head for s in KINDS.values()
              if any(s.shared_head(Task("t", s.name, None, None, scenario=sc))
                     for sc in ("task_il", "class_il"))}
    assert shared == {"classifier", "ciss"}
    tasks = [Task("t", "classification", None, None, classes=[0, 1])]
    enc = torch.nn.Module()
    enc.hidden_size, enc.spatial_dims = 4, 2
    for head in shared:  # the ViT / UNet family builds each (Swin and SegResNet refuse)
        assert isinstance(ViTHeads().build_shared(head, tasks, enc), torch.nn.Module)


def test_metrics_and_directions():
    assert {k: (s.metric, s.higher_is_better) for k, s in KINDS.items()} == {
        "segmentation": ("dice", True), "regression": ("mae", False),
        "classification": ("accuracy", True), CISS: ("miou", True)}
    task = Task("age", "regression", None, None)
    assert (task.metric, task.higher_is_better) == ("mae", False)


@pytest.mark.parametrize("kind", ["segmentaton", "", None, "Segmentation"])
def test_an_unknown_kind_raises_one_clear_error(kind):
    with pytest.raises(UnknownKindError, match=r"unknown task kind .*known kinds: segmentation, "
                                               r"regression, classification, "
                                               r"class_incremental_segmentation"):
        kind_spec(kind)
    assert issubclass(UnknownKindError, ConfigError) and issubclass(UnknownKindError, ValueError)


def test_an_unknown_kind_is_refused_wherever_a_task_is_used():
    task = Task("t", "segmentaton", ArrayDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2)),
                ArrayDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2)))
    for use in (lambda: task.metric, lambda: task.higher_is_better, lambda: TaskLoss(task),
                lambda: TaskScorer(task)):
        with pytest.raises(UnknownKindError, match="'segmentaton'"):
            use()


def test_scorer_dispatches_on_the_kind():
    seg = Task("s", "segmentation", None, None, num_classes=3)
    reg = Task("r", "regression", None, None, target_mean=50.0, target_std=10.0)
    cls = Task("c", "classification", None, None, num_classes=2, classes=[4, 7])
    ciss = Task("k", CISS, None, None, num_classes=4, classes=[1], stream_classes=[1, 2, 3],
                info={"step": 0, "n_base": 1})
    for task, want in ((seg, DiceScorer), (reg, MAEScorer), (cls, AccuracyScorer),
                       (ciss, MIoUScorer)):
        scorer = TaskScorer(task, [task], [1])
        assert type(scorer) is want and isinstance(scorer, TaskScorer)
    assert TaskScorer(cls).none_class == 8  # global ids 0..7 answerable, 8 = no answer


def test_regression_scorer_in_native_units():
    task = Task("age", "regression", None, None, target_mean=50.0, target_std=10.0)
    scorer = TaskScorer(task)
    scorer.update(torch.tensor([40.0, 62.0]), torch.tensor([42.0, 60.0]))
    out = scorer.result()
    assert out["mae"] == pytest.approx(2.0) and out["mae_normalised"] == pytest.approx(0.2)
    assert out["mae_mean_predictor"] == pytest.approx(9.0)  # |50-42|, |50-60|


def test_losses_per_kind_match_their_formulas():
    torch.manual_seed(0)
    reg = Task("age", "regression", None, None, target_mean=50.0, target_std=10.0)
    out, y = torch.randn(4), torch.tensor([40.0, 55.0, 60.0, 70.0])
    torch.testing.assert_close(TaskLoss(reg)(out, y),
                               torch.nn.functional.mse_loss(out, (y - 50.0) / 10.0))
    cls = Task("c", "classification", None, None, num_classes=3)
    logits, lab = torch.randn(4, 3).bfloat16(), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(TaskLoss(cls)(logits, lab),
                               torch.nn.functional.cross_entropy(logits.float(), lab))
    seg = Task("s", "segmentation", None, None, num_classes=3)
    assert TaskLoss(seg).dice_ce is not None and TaskLoss(reg).dice_ce is None


def test_old_segmentation_loss_keys_still_load():
    """A mid-task checkpoint written before the table held the loss buffers under dice_ce."""
    seg = Task("s", "segmentation", ArrayDataset(torch.zeros(2, 1, 4, 4),
                                                 torch.tensor([[[[0, 1], [2, 1]]]] * 2)), None,
               num_classes=3)
    loss = TaskLoss(seg, "median_frequency")
    old = {k.removeprefix("criterion."): v.clone() + 1 for k, v in loss.state_dict().items()}
    assert old and all(k.startswith("dice_ce.") for k in old)
    loss.load_state_dict(old)
    torch.testing.assert_close(loss.dice_ce.cross_entropy.weight, old["dice_ce.cross_entropy.weight"])


def test_answers_and_no_answers():
    reg = Task("age", "regression", None, None, target_mean=50.0, target_std=10.0)
    torch.testing.assert_close(kind_spec("regression").answer(None, reg, torch.tensor([0.5])),
                               torch.tensor([55.0]))
    cls = Task("c", "classification", None, None, num_classes=2, classes=[4, 7])
    assert kind_spec("classification").answer(
        None, cls, torch.tensor([[0.1, 0.9], [2.0, 0.0]])).tolist() == [7, 4]
    x = torch.zeros(3, 1, 5, 6)
    seg = Task("s", "segmentation", None, None, num_classes=3)
    assert _no_answer(seg, x, TaskScorer(seg)).shape == (3, 5, 6)
    assert _no_answer(reg, x, TaskScorer(reg)).tolist() == [50.0] * 3
    assert _no_answer(cls, x, TaskScorer(cls)).tolist() == [8] * 3
    ciss = Task("k", CISS, None, None, num_classes=4, info={"step": 0, "n_base": 1})
    with pytest.raises(ConfigError, match="eval.task_id=oracle"):
        _no_answer(ciss, x, TaskScorer(ciss))


def test_compatibility():
    a = Task("a", "segmentation", None, None, num_classes=3)
    assert _compatible(a, dataclasses.replace(a, name="b"))
    assert not _compatible(a, dataclasses.replace(a, num_classes=4))
    assert not _compatible(a, Task("r", "regression", None, None))
    r = Task("r", "regression", None, None)
    assert _compatible(r, dataclasses.replace(r, target_mean=3.0))


def test_the_task_kind_literal_names_the_table_rows_in_order():
    from typing import get_args

    assert tuple(KINDS) == get_args(TaskKind)


def test_a_scorer_copies():
    import copy

    task = Task("age", "regression", None, None, target_mean=50.0)
    scorer = TaskScorer(task)
    scorer.update(torch.tensor([40.0]), torch.tensor([42.0]))
    twin = copy.deepcopy(scorer)
    assert type(twin) is MAEScorer and twin.result() == scorer.result()
