"""The growing class-IL head: which output units are live when."""

from __future__ import annotations

import torch

from cl_bench.models.heads import MASKED_LOGIT, ClassILHead, TaskView


def test_units_activate_with_tasks_and_survive_state_dict():
    head = ClassILHead(hidden_size=4, sizes=[2, 2, 3])
    views = [TaskView(head, k) for k in range(3)]
    tokens = torch.randn(5, 6, 4)
    head.begin_task(0)
    out = views[0](None, tokens, [], None)
    assert out.shape == (5, 7)
    assert (out[:, 2:] == MASKED_LOGIT).all() and (out[:, :2] != MASKED_LOGIT).all()
    # evaluating a task not yet trained also opens that task's units (for the init row / FWT)
    assert (views[2](None, tokens, [], None)[:, :7] != MASKED_LOGIT).all()
    head.begin_task(1)
    out = views[0](None, tokens, [], None)  # an old task now competes with task 1's classes
    assert (out[:, :4] != MASKED_LOGIT).all() and (out[:, 4:] == MASKED_LOGIT).all()
    head.begin_task(0)  # never shrinks
    assert int(head.n_seen) == 2
    fresh = ClassILHead(4, [2, 2, 3])
    fresh.load_state_dict(head.state_dict())
    assert int(fresh.n_seen) == 2
