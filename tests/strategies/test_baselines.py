"""ewc, lwf, er, joint: hyper-parameter errors and the mechanics behind their zoo properties."""

from __future__ import annotations

import pytest
import torch

from cl_bench.data.digits import make_digits
from cl_bench.errors import ConfigError
from cl_bench.models.continual import make_model
from cl_bench.strategies.er import ER
from cl_bench.strategies.ewc import EWC
from cl_bench.strategies.joint import Joint
from cl_bench.strategies.lwf import LwF


@pytest.mark.parametrize("make, key", [
    (lambda: EWC(ewc_lambda=-1), "strategy.ewc_lambda"),
    (lambda: EWC(gamma=0), "strategy.gamma"),
    (lambda: EWC(fisher_max_samples=0), "strategy.fisher_max_samples"),
    (lambda: LwF(alpha=-0.1), "strategy.alpha"),
    (lambda: LwF(temperature=0), "strategy.temperature"),
    (lambda: ER(buffer_size=0), "strategy.buffer_size"),
    (lambda: ER(replay_batch_size=-2), "strategy.replay_batch_size"),
    (lambda: Joint(batch_size=0), "strategy.batch_size"),
])
def test_bad_hyper_parameter_names_the_key(make, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make()


def stream_and_model(scenario="task_il"):
    torch.manual_seed(0)
    stream = make_digits(n_tasks=3, scenario=scenario)
    model = make_model(1, 8, 2, 32, 64, 2, 4, 2)
    model.add_heads(stream)
    return stream, model


def test_reservoir_never_exceeds_its_size_and_keeps_every_task():
    stream, model = stream_and_model()
    er = ER(buffer_size=60)
    er.setup(model, stream)
    for t, task in enumerate(stream):
        er.after_task(t, task)
        assert len(er.buffer) == 60 and len(set(er.buffer)) == 60
    assert er.n_seen == sum(len(t.train) for t in stream)
    counts = [sum(1 for j, _ in er.buffer if j == k) for k in range(3)]
    assert all(c >= 8 for c in counts), counts  # ~20 each: every task keeps a share
    assert er.replay_samples(2, n=32).__len__() == 32  # as many as the current batch
    state = er.state_dict()
    again = ER(buffer_size=60)
    again.load_state_dict(state)
    assert again.buffer == er.buffer and again.n_seen == er.n_seen


def test_ewc_fisher_is_non_negative_and_covers_only_shared_parameters():
    stream, model = stream_and_model()
    ewc = EWC(fisher_max_samples=16)
    ewc.setup(model, stream)
    model.begin_task(stream[0])
    ewc.before_task(0, stream[0])
    fisher = ewc.fisher(stream[0])
    assert fisher and not any(n.startswith("heads.") for n in fisher)  # task-IL heads are private
    assert all((f >= 0).all() for f in fisher.values())
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    # class-IL: the growing head is shared, so it is consolidated too
    stream, model = stream_and_model("class_il")
    ewc = EWC(fisher_max_samples=4)
    ewc.setup(model, stream)
    assert any(n.startswith("heads.") for n in ewc.shared_parameters())


def test_lwf_distils_each_old_head_once_and_only_old_classes_in_class_il():
    stream, model = stream_and_model("class_il")
    lwf = LwF()
    lwf.setup(model, stream)
    for t in range(3):
        model.begin_task(stream[t])
        lwf.before_task(t, stream[t])
    assert [o.name for o in lwf.old_tasks] == ["digits_0_1"]  # one shared head: one term
    batch = {"image": torch.stack([stream[2].train[i]["image"] for i in range(4)])}
    assert float(lwf.training_loss(batch, None, 2)) > 0
    til, model = stream_and_model()
    lwf = LwF()
    lwf.setup(model, til)
    lwf.before_task(2, til[2])
    assert [o.name for o in lwf.old_tasks] == ["digits_0_1", "digits_2_3"]
    # nothing moved yet: the copy equals the model, so the pull has zero gradient
    loss = lwf.training_loss(batch, None, 2)
    loss.backward()
    grads = [p.grad.abs().max() for p in model.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-5
