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


def test_ewc_fisher_subset_is_random_from_the_seed_and_covers_every_class():
    # the digit streams store a task's training set class by class: the first samples are one
    # class, so "the first fisher_max_samples" would consolidate one class of the task only
    stream, model = stream_and_model()
    task = stream[0]
    labels = [int(task.train[i]["label"]) for i in range(len(task.train))]
    assert len(set(labels[:16])) == 1  # what the old "first n samples" rule saw
    picks = {}
    for seed in (0, 1):
        ewc = EWC(fisher_max_samples=16)
        ewc.seed = seed
        ewc.setup(model, stream)
        idx = ewc.fisher_indices(task)
        assert len(idx) == 16 == len(set(idx)) and idx == sorted(idx)
        assert {labels[i] for i in idx} == set(labels)  # every class of the task enters F
        assert ewc.fisher_indices(task) == idx  # reproducible
        picks[seed] = idx
    assert picks[0] != picks[1]  # and seeds differ
    everything = EWC(fisher_max_samples=10 ** 6)
    everything.setup(model, stream)
    assert everything.fisher_indices(task) == list(range(len(task.train)))


def test_lwf_distillation_value_is_the_papers_cross_entropy():
    from cl_bench.strategies.lwf import distillation

    # T = 2: old logits (2 ln 3, 0) -> q = (3/4, 1/4); new logits (0, 0) -> p = (1/2, 1/2);
    # -sum q log p = ln 2 (Li & Hoiem Eq. 3-4, no T^2), and 4 ln 2 with Hinton's T^2
    old = torch.tensor([[2 * torch.log(torch.tensor(3.0)), 0.0]])
    new = torch.zeros(1, 2)
    ln2 = float(torch.log(torch.tensor(2.0)))
    assert float(distillation(new, old, "classification", 2.0)) == pytest.approx(ln2)
    assert float(distillation(new, old, "classification", 2.0, t_squared=True)) == \
        pytest.approx(4 * ln2)


@pytest.mark.parametrize("alpha, reduction", [(1.0, "sum"), (0.5, "sum"), (2.0, "mean")])
def test_lwf_sums_the_old_tasks_terms_weighted_by_alpha(alpha, reduction):
    from cl_bench.strategies.lwf import distillation

    til, model = stream_and_model()
    lwf = LwF(alpha=alpha, reduction=reduction)
    lwf.setup(model, til)
    lwf.before_task(2, til[2])
    with torch.no_grad():  # move the model away from its frozen copy
        for p in model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.stack([til[2].train[i]["image"] for i in range(4)])
    with torch.no_grad():
        terms = [distillation(model(x, t.name), lwf.old_model(x, t.name), t.kind, 2.0)
                 for t in til[:2]]
        loss = lwf.training_loss({"image": x}, None, 2)
    expected = alpha * (sum(terms) if reduction == "sum" else sum(terms) / 2)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert all(float(v) > 0 for v in terms)


def test_lwf_refuses_an_unknown_reduction():
    with pytest.raises(ConfigError, match=r"strategy\.reduction"):
        LwF(reduction="max")


def test_er_buffer_depends_on_the_run_seed():
    stream, model = stream_and_model()
    buffers = {}
    for seed in (0, 1, 0):
        er = ER(buffer_size=30)
        er.seed = seed
        er.setup(model, stream)
        for t, task in enumerate(stream):
            er.after_task(t, task)
        buffers.setdefault(seed, []).append(list(er.buffer))
    assert buffers[0][0] == buffers[0][1]  # the same seed keeps the same samples
    assert buffers[0][0] != buffers[1][0]  # another seed keeps others
