"""The training step's strategy hooks (Strategy.before_backward, after_backward,
before_optimizer_step): called once per step, in order, with the step's loss and optimiser, by
the runner's real training loop (cl_bench.training.fit_task); a gradient edited in
after_backward is what the optimiser uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import cl_bench.config  # noqa: F401  (registers the schema)
from cl_bench.data.base import ArrayDataset, Task
from cl_bench.models.continual import make_model
from cl_bench.strategies.base import Strategy
from cl_bench.training import fit_task

CONF = str(Path(__file__).resolve().parents[2] / "conf")
STEPS = 4


class Recording(Strategy):
    """Records every call of the step; zeroes ``frozen``'s gradient in ``after_backward``."""

    def __init__(self):
        super().__init__(lr=1e-2, head_lr=1e-2)
        self.calls: list[tuple] = []
        self.frozen: torch.nn.Parameter | None = None
        self.moving: torch.nn.Parameter | None = None

    def task_loss(self, batch, out, t, loss_fn):
        loss = super().task_loss(batch, out, t, loss_fn)
        self.calls.append(("task_loss", t, loss.item()))
        return loss

    def training_loss(self, batch, out, t):
        extra = 0.5 * out.float().pow(2).mean()  # a real extra term: the hooks see the sum
        self.calls.append(("training_loss", t, extra.item()))
        return extra

    def before_backward(self, loss, t):
        grads = [p.grad for p in self.trainable_parameters()]
        self.calls.append(("before_backward", t, loss, all(g is None for g in grads),
                           self.moving.detach().clone()))

    def after_backward(self, loss, t):
        nonzero = bool(self.frozen.grad.abs().sum() > 0)  # the loss does reach it
        self.frozen.grad.zero_()
        self.calls.append(("after_backward", t, loss, nonzero,
                           self.moving.grad is not None and bool(self.moving.grad.any())))

    def before_optimizer_step(self, optimizer, t):
        params = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.calls.append(("before_optimizer_step", t, optimizer, params,
                           self.frozen.grad.clone(), self.moving.detach().clone()))


def _task(name: str) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g).numpy()
    y = np.arange(16) % 2
    return Task(name, "classification", ArrayDataset(x, y), ArrayDataset(x[:4], y[:4]),
                num_classes=2, classes=[0, 1])


def test_hooks_run_once_per_step_in_order_and_an_edited_gradient_is_what_steps(tmp_path):
    torch.manual_seed(0)
    stream = [_task("a")]
    model = make_model(1, 8, 2, 32, 64, 2, 4, spatial_dims=2)
    model.add_heads(stream)
    strategy = Recording()
    strategy.setup(model, stream)
    strategy.frozen = model.heads["a"].fc.weight  # (2, 32): the loss reaches it every step
    strategy.moving = model.backbone.vit.patch_embedding.patch_embeddings.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"train.max_steps={STEPS}", "train.batch_size=8", "train.progress_bar=false",
            "train.checkpoint_every_n_epochs=0", "train.val_every_n_steps=0", "logger=none",
            "hardware.num_threads=1"])
    steps = fit_task(cfg, tmp_path, model, strategy, stream[0], 0, 1, None, "32-true")
    assert steps == STEPS

    names = [c[0] for c in strategy.calls]
    assert names == ["task_loss", "training_loss", "before_backward", "after_backward",
                     "before_optimizer_step"] * STEPS
    for s in range(STEPS):
        task, extra, bb, ab, bos = strategy.calls[5 * s:5 * s + 5]
        assert all(c[1] == 0 for c in (task, extra, bb, ab, bos))  # the task index t
        loss = bb[2]
        # the step's total loss, 0-d and still attached; the same object after backward
        assert loss.dim() == 0 and loss.requires_grad and ab[2] is loss
        assert loss.item() == (torch.tensor(task[2]) + torch.tensor(extra[2])).item()  # float32
        assert bb[3]  # zero_grad came first: no gradient yet
        assert ab[3] and ab[4]  # backward came before after_backward: gradients exist
        optimizer = bos[2]
        assert isinstance(optimizer, torch.optim.AdamW)
        assert bos[3] == {id(p) for p in strategy.trainable_parameters()}
        assert torch.count_nonzero(bos[4]) == 0  # the edit reaches the optimiser
        assert torch.equal(bos[5], bb[4])  # no step between before_backward and this hook
        if s:  # ... and one step between this hook and the next step's before_backward
            assert not torch.equal(strategy.calls[5 * s - 1][5], bb[4])

    after = dict(model.named_parameters())
    frozen = next(n for n, p in after.items() if p is strategy.frozen)
    assert torch.equal(after[frozen], before[frozen])  # zero gradient: bit for bit unchanged
    moved = [n for n, p in after.items() if not torch.equal(p, before[n])]
    assert moved and frozen not in moved


def test_the_base_hooks_do_nothing():
    s = Strategy()
    loss = torch.tensor(1.5, requires_grad=True)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    assert s.before_backward(loss, 0) is None and s.after_backward(loss, 0) is None
    assert s.before_optimizer_step(opt, 0) is None
    assert loss.grad is None
