"""STAR / STAR-Lite: the official formulas on hand-made numbers, errors, and tiny seg_mnist runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.data.digits import make_digits
from cl_bench.errors import ConfigError
from cl_bench.models.continual import make_model
from cl_bench.models.heads import CISSHead
from cl_bench.runner import run
from cl_bench.strategies.star import (STAR, background_ratio, class_centres, classifier_weights,
                                      combine_lite, derive_prototypes, lite_noise, ocfm_loss,
                                      old_negative_loss,
                                      old_predictions, prototype_statistics, rebalanced_bce,
                                      replay_counts, replay_weights, sad_loss, sample_basic,
                                      sample_lite, storage_bytes, updated_counts)

CONF = str(Path(__file__).resolve().parents[2] / "conf")
LOG2 = math.log(2.0)


# ------------------------------------------------------------------ prototype statistics
def test_prototype_statistics_of_a_hand_made_feature_map():
    # 2 channels, 1 x 5 pixels: class 1 at (3,4) and (8,6); background (1,0); 255 at (9,9);
    # class 2 at (0,2); class 3 absent
    f = torch.tensor([[3., 8., 1., 9., 0.], [4., 6., 0., 9., 2.]]).view(1, 2, 1, 5)
    label = torch.tensor([1, 1, 0, 255, 2]).view(1, 1, 1, 5)
    s = prototype_statistics(f, label, [1, 2, 3])
    # normalise(F): (0.6, 0.8), (0.8, 0.6) -> sum (1.4, 1.4) -> p_1 = (1, 1) / sqrt 2
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(s["prototypes"], torch.tensor([[r, r], [0., 1.], [0., 0.]]))
    # sigma_1 per channel: sqrt(((0.6 - r)^2 + (0.8 - r)^2) / 2), both channels alike
    sig = math.sqrt(((0.6 - r) ** 2 + (0.8 - r) ** 2) / 2)
    torch.testing.assert_close(s["noise"], torch.tensor([[sig, sig], [0., 0.], [0., 0.]]))
    # ||F||: 5 and 10 -> mean 7.5, unbiased SD sqrt(2 * 2.5^2) ; class 2: one pixel of norm 2
    torch.testing.assert_close(s["norm"], torch.tensor([[7.5, 2., 0.],
                                                        [math.sqrt(12.5), 0., 0.]]))
    assert s["counts"].tolist() == [2., 1., 0.]
    assert float(s["background"]) == 1.0  # the 255 pixel is neither class nor background


def test_statistics_summed_over_batches_equal_one_pass():
    from cl_bench.strategies.star import add_sums, class_sums, statistics_from_sums
    torch.manual_seed(0)
    f = torch.rand(4, 3, 5, 5)
    label = torch.randint(0, 3, (4, 1, 5, 5))
    whole = prototype_statistics(f, label, [1, 2])
    total = None
    for i in range(4):
        total = add_sums(total, class_sums(f[i:i + 1], label[i:i + 1], [1, 2]))
    parts = statistics_from_sums(total)
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key])


# ------------------------------------------------------------------------ replay rules
def test_replay_counts_background_ratio_and_carried_counts():
    prev, pred = torch.tensor([100., 50., 7.]), torch.tensor([30., 60., 0.])
    assert replay_counts(prev, pred, 10, "overlapped").tolist() == [7, 0, 0]  # 7, -1 -> 0, 0.7 -> 0
    assert replay_counts(prev, pred, 10, "disjoint").tolist() == [10, 5, 0]
    assert background_ratio(1000, 400, 2, "overlapped") == pytest.approx(1000 * 0.98 / 400 - 0.5)
    assert background_ratio(1000, 400, 2, "disjoint") == pytest.approx(2.5)
    assert background_ratio(100, 400, 2, "overlapped") == 0.0  # clamped at 0
    assert background_ratio(1000, 0, 2, "disjoint") == 0.0  # no background predicted
    n_prev, n_pred = torch.tensor([1000., 100., 50.]), torch.tensor([400., 30., 60.])
    assert updated_counts(n_prev, n_pred, 2, "overlapped").tolist() == [1180., 100., 50.]
    assert updated_counts(n_prev, n_pred, 2, "disjoint").tolist() == [1400., 130., 110.]
    assert updated_counts(n_prev, n_pred, 2, "overlapped", "lite").tolist() == [1400., 100., 50.]
    assert replay_weights(2, 3, 4, 2.0) == (0.5, 1.5)
    with pytest.raises(ConfigError, match="tasks.setting"):
        replay_counts(prev, pred, 10, "overlap")


def test_rebalanced_bce_on_hand_made_logits():
    label = torch.tensor([[1, 0], [0, 255]]).view(1, 1, 2, 2)
    logits = torch.zeros(1, 1, 2, 2)  # every BCE term is log 2 (times pos_weight if positive)
    plain = rebalanced_bce(logits, label, [1], pos_weight=4.0)
    assert float(plain) == pytest.approx((4 + 2) / 3 * LOG2)  # 255 ignored
    w_f, w_b = replay_weights(2, 3, 4, 2.0)
    full = rebalanced_bce(logits, label, [1], torch.zeros(2, 1), torch.zeros(3, 1), w_f, w_b, 4.0)
    assert float(full) == pytest.approx((2 + 0.5 + 1.5) / 3 * LOG2)
    # two classes: summed over classes
    two = rebalanced_bce(torch.zeros(1, 2, 2, 2), label, [1, 7], pos_weight=4.0)
    assert float(two) == pytest.approx(2 * LOG2 + LOG2)


# ------------------------------------------------------------------------- OCFM and SAD
def test_ocfm_is_zero_for_equal_features_and_exact_otherwise():
    f = torch.tensor([[1., 2.], [3., 4.]]).view(1, 2, 1, 2)
    mask = torch.tensor([True, False]).view(1, 1, 1, 2)
    assert float(ocfm_loss(f, f.clone(), mask)) == 0.0
    old = f + torch.tensor([[2., 5.], [2., 5.]]).view(1, 2, 1, 2)  # pixel 1 unmasked
    assert float(ocfm_loss(f, old, mask)) == pytest.approx((4 + 4) / (1 * 2))
    assert float(ocfm_loss(f, old, torch.zeros_like(mask))) == 0.0  # no masked pixel


def test_sad_uses_the_nearest_old_prototype_of_each_new_class():
    old = torch.tensor([[1., 0.], [0., 1.], [-1., 0.]], requires_grad=True)
    centres = torch.tensor([[0.6, 0.8], [0.96, 0.28]])  # nearest: old 1 (d^2 0.4), old 0 (0.08)
    loss = sad_loss(centres, old)
    assert float(loss.detach()) == pytest.approx((1 / math.sqrt(0.4) + 1 / math.sqrt(0.08)) / 2)
    loss.backward()
    assert old.grad[0].abs().sum() > 0 and old.grad[1].abs().sum() > 0
    assert old.grad[2].abs().sum() == 0  # never the nearest: no pull
    # centres: normalise(sum normalise(F)) of each class's pixels, 0 for an absent class
    f = torch.tensor([[3., 8., 1.], [4., 6., 0.]]).view(1, 2, 1, 3)
    c = class_centres(f, torch.tensor([5, 5, 0]).view(1, 1, 1, 3), [5, 6])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(c, torch.tensor([[r, r], [0., 0.]]))


def test_old_negative_loss_pushes_old_logits_down_on_new_pixels_through_features_only():
    head = CISSHead(2, [[1, 2], [3]])  # old classes 1, 2; new class 3
    with torch.no_grad():
        head.cls[0].weight.copy_(torch.tensor([[1., 0.], [0., 2.]]).view(2, 2, 1, 1))
        head.cls[0].bias.copy_(torch.tensor([0., -1.]))
    f = torch.tensor([[1., 4., 9.], [3., 0., 9.]]).view(1, 2, 1, 3).requires_grad_(True)
    label = torch.tensor([3, 3, 1]).view(1, 1, 1, 3)  # pixels 0, 1 are new class 3
    loss = old_negative_loss(f, label, [3], head, n_old=2)
    sp = torch.nn.functional.softplus  # BCE(z, 0) = softplus(z)
    # old logits on pixel 0: (1, 2*3-1=5); on pixel 1: (4, -1); mean per class, sum over classes
    want = (sp(torch.tensor(1.)) + sp(torch.tensor(4.))) / 2 + (sp(torch.tensor(5.))
                                                               + sp(torch.tensor(-1.))) / 2
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    loss.backward()
    assert f.grad[..., :2].abs().sum() > 0 and f.grad[..., 2].abs().sum() == 0
    assert all(p.grad is None for p in head.parameters())  # the old classifiers do not move
    none = old_negative_loss(f, torch.zeros_like(label), [3], head, n_old=2)
    assert float(none) == 0.0


def test_old_predictions_follow_the_sigmoid_rule():
    logits = torch.tensor([[-3., 2., 0.1], [-2., 1., 3.]]).view(1, 2, 1, 3)
    assert old_predictions(logits).view(-1).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------- fake features
def test_fake_features_basic_and_lite():
    p = torch.tensor([[0.6, 0.8], [1., 0.]])
    exact = sample_basic(p, torch.zeros(2, 2), torch.tensor([[2., 3.], [0., 0.]]),
                         torch.tensor([2, 1]))
    torch.testing.assert_close(exact, torch.stack([p[0] * 2, p[0] * 2, p[1] * 3]))
    torch.manual_seed(0)
    noisy = sample_basic(p, torch.full((2, 2), 0.1), torch.tensor([[2., 3.], [0.5, 0.5]]),
                         torch.tensor([3000, 0]))
    assert noisy.shape == (3000, 2)
    torch.testing.assert_close(noisy.mean(0), p[0] * 2, atol=0.05, rtol=0)

    torch.testing.assert_close(sample_lite(p, 0.0, torch.tensor([1, 2]), 4.0),
                               torch.stack([p[0], p[1], p[1]]) * 4)
    q = torch.nn.functional.normalize(torch.rand(2, 16), dim=1)
    torch.manual_seed(1)
    f = sample_lite(q, 0.5, torch.tensor([4000, 0]), 3.0)
    assert f.shape == (4000, 16)
    torch.testing.assert_close(f.norm(dim=1), torch.full((4000,), 3.0))
    chord = (f / 3.0 - q[0]).norm(dim=1)  # |z sigma|, half-normal: mean sigma sqrt(2 / pi)
    assert float(chord.max()) < 1.999
    assert float(chord.mean()) == pytest.approx(0.5 * math.sqrt(2 / math.pi), abs=0.02)


# ------------------------------------------------------------------------------- lite
def test_lite_derived_prototypes_are_classified_as_their_class():
    torch.manual_seed(0)
    head = CISSHead(16, [[1, 2, 3], [4, 5]])
    with torch.no_grad():
        for c in head.cls:
            c.bias.fill_(-1.0)  # equal biases: the arg-max does not depend on the scale
    w, b = classifier_weights(head, 1)
    assert w.shape == (3, 16) and b.shape == (3,)
    unit, raw = derive_prototypes(w, b, iters=3000, lr=0.05, return_raw=True)
    assert (raw >= 0).all()
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(3))
    logits = head.classify(unit.view(3, 16, 1, 1))[:, :3]  # the old classifier (step 0)
    assert logits.flatten(1).argmax(1).tolist() == [0, 1, 2]
    at_scale = head.classify(raw.view(3, 16, 1, 1))[:, :3].flatten(1)
    assert (old_predictions(at_scale.view(3, 3, 1, 1)).view(-1) - 1).tolist() == [0, 1, 2]
    # combined with the old model's mean feature of the class, and the lite noise
    torch.testing.assert_close(combine_lite(torch.tensor([[1., 0.]]), torch.tensor([[0., 3.]])),
                               torch.tensor([[1., 1.]]) / math.sqrt(2))
    three = torch.tensor([[1., 0.], [0., 1.], [-1., 0.]])
    assert lite_noise(three) == pytest.approx(math.sqrt(2))
    assert lite_noise(three[:1]) == 0.0


# ---------------------------------------------------------------------------- storage
def test_storage_figure_on_a_known_setting():
    basic = storage_bytes(6, 32, (1, 32, 32), "basic")
    # prototypes + noise 6*32*4 each, norm mean/SD 2*6*4, counts (6+1)*4
    assert basic["stored"]["total"] == 768 + 768 + 48 + 28 == 1612
    assert basic["raw_replay"]["total"] == 6 * (32 * 32 * 4 + 32 * 32) == 30720
    assert basic["ratio"] == pytest.approx(30720 / 1612) and basic["ratio"] > 1
    lite = storage_bytes(6, 32, (1, 32, 32), "lite")
    assert lite["stored"] == {"pixel_counts": 28, "total": 28}
    # VOC-like: 15 classes, 256-d ASPP features, 3 x 512 x 512 crops: > 100x
    assert storage_bytes(15, 256, (3, 512, 512))["ratio"] > 100


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, key", [
    ({"variant": "full"}, "strategy.variant"),
    ({"pos_weight": 0}, "strategy.pos_weight"),
    ({"ocfm_weight": -1}, "strategy.ocfm_weight"),
    ({"sad_weight": -0.1}, "strategy.sad_weight"),
    ({"lite_iters": 0}, "strategy.lite_iters"),
    ({"lite_lr": 0.0}, "strategy.lite_lr"),
    ({"lite_weight_decay": -1.0}, "strategy.lite_weight_decay"),
    ({"stats_batch_size": 0}, "strategy.stats_batch_size"),
    ({"old_negative_weight": -1.0}, "strategy.old_negative_weight"),
    ({"lr": 0}, "strategy.lr"),
])
def test_bad_hyper_parameter_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        STAR(**kwargs)
    assert "\n" not in str(e.value)


def test_setup_refuses_a_stream_that_is_not_ciss():
    stream = make_digits(n_tasks=2, scenario="class_il")
    model = make_model(1, 8, 2, 32, 64, 2, 4, 2)
    model.add_heads(stream)
    with pytest.raises(ConfigError, match="strategy=star needs a class-incremental "
                                          "segmentation stream") as e:
        STAR().setup(model, stream)
    assert "\n" not in str(e.value) and "'classification'" in str(e.value)


# ------------------------------------------------------------------------ end to end
def tiny_cfg(strategy: str, *extra: str):
    overrides = ["tasks=seg_mnist_6-4", f"strategy={strategy}", "tasks.n_train=120",
                 "tasks.n_test=40", "tasks.size=32", "tasks.scale_min=10", "tasks.scale_max=16",
                 "train.max_steps=10", "train.batch_size=8", "train.progress_bar=false",
                 "logger=csv", "hardware.num_threads=1", *extra]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


# star_lite also runs the optional old-class negatives (our deviation), end to end and on resume
VARIANTS = {"star": (), "star_lite": ("strategy.lite_iters=2000", "strategy.lite_lr=0.01",
                                      "strategy.old_negative_weight=1.0")}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def finished(request, tmp_path_factory):
    cfg = tiny_cfg(request.param, *VARIANTS[request.param])
    run_dir = tmp_path_factory.mktemp(request.param)
    return request.param, cfg, run_dir, run(cfg, run_dir)


def test_tiny_seg_mnist_stream_writes_metrics_and_storage(finished):
    name, _, run_dir, out = finished
    variant = "basic" if name == "star" else "lite"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["strategy"] == name
    last = metrics["details"]["after_seg_mnist_6-4_s1"]
    for task in ("seg_mnist_6-4_s0", "seg_mnist_6-4_s1"):
        for key in ("miou_base", "miou_new", "miou_all"):
            assert 0.0 <= last[task][key] <= 1.0, (task, key)
    assert last["seg_mnist_6-4_s0"]["miou_all"] == last["seg_mnist_6-4_s1"]["miou_all"]
    ciss = pd.read_csv(run_dir / "ciss.csv", index_col=0)  # base / new / all after each step
    assert list(ciss.index) == ["after_seg_mnist_6-4_s0", "after_seg_mnist_6-4_s1"]
    assert ciss.loc["after_seg_mnist_6-4_s1", "miou_all"] == pytest.approx(
        last["seg_mnist_6-4_s1"]["miou_all"])
    assert np.isnan(ciss.loc["after_seg_mnist_6-4_s0", "miou_new"])  # no new class yet
    assert metrics["ciss"]["last"]["miou_base"] == pytest.approx(last["seg_mnist_6-4_s1"]["miou_base"])

    storage = json.loads((run_dir / "star" / "storage.json").read_text())
    assert storage["variant"] == variant and storage["classes_stored"] == 10
    expected = storage_bytes(10, 32, (1, 32, 32), variant)
    assert storage["stored"] == expected["stored"]
    assert storage["stored_tensor_bytes"] == expected["stored"]["total"]  # what is really kept
    assert storage["ratio"] == pytest.approx(expected["ratio"]) and storage["ratio"] > 1
    assert [h["classes_stored"] for h in storage["history"]] == [6, 10]

    star = out.strategy
    numbers = star.bank["numbers"]
    assert numbers.shape == (11,) and (numbers > 0).all()  # background + 10 classes
    step = star.step  # step 1's replay plan, built from step 0's counts and the old model
    assert step["t"] == 1 and step["iters"] == math.ceil(len(star.stream[1].train) / 8)
    assert step["per_iter"].shape == (6,) and int(step["per_iter"].sum()) > 0
    assert step["bg_ratio"] > 0
    if variant == "basic":
        assert star.bank["prototypes"].shape == (10, 32) and star.bank["norm"].shape == (2, 10)
        torch.testing.assert_close(star.bank["prototypes"].norm(dim=1), torch.ones(10))
    else:
        assert set(star.bank) == {"numbers"}  # nothing but counts is stored
        assert step["prototypes"].shape == (6, 32) and step["sigma"] > 0
    # the boundary state is plain tensors / lists / dicts
    state = torch.load(run_dir / "checkpoints" / "state.pt", weights_only=True)
    torch.testing.assert_close(state["strategy"]["bank"]["numbers"], numbers)


def test_resume_of_a_finished_run_restores_the_strategy(finished):
    name, cfg, run_dir, out = finished
    matrix = (run_dir / "matrix.csv").read_bytes()
    storage = (run_dir / "star" / "storage.json").read_bytes()
    again = run(cfg, run_dir)
    assert (run_dir / "matrix.csv").read_bytes() == matrix
    assert (run_dir / "star" / "storage.json").read_bytes() == storage
    before, after = out.strategy.state_dict(), again.strategy.state_dict()
    assert before["bank"].keys() == after["bank"].keys()
    for key in before["bank"]:
        assert torch.equal(before["bank"][key], after["bank"][key]), key
    assert before["storage"] == after["storage"]
    assert np.isclose(before["step"]["bg_ratio"], after["step"]["bg_ratio"])


class Interrupted(Exception):
    """Stands for a crash in the middle of step 1."""


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_crash_in_step_1_then_resume_matches_the_uninterrupted_run(name, tmp_path, monkeypatch):
    cfg = tiny_cfg(name, *VARIANTS[name], "train.max_steps=16",
                   "train.checkpoint_every_n_epochs=1", "train.checkpoint_min_interval_s=0")
    ref = run(cfg, tmp_path / "ref")
    iters = ref.strategy.step["iters"]
    assert iters < 12 < 16  # a mid-task checkpoint exists when the crash comes
    original, calls = STAR.task_loss, {"n": 0}

    def crashing(self, batch, out, t, loss_fn):
        if t == 1:
            calls["n"] += 1
            if calls["n"] == 12:
                raise Interrupted
        return original(self, batch, out, t, loss_fn)

    monkeypatch.setattr(STAR, "task_loss", crashing)
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "seg_mnist_6-4_s1" / "mid_task.ckpt").is_file()
    monkeypatch.setattr(STAR, "task_loss", original)
    resumed = run(cfg, tmp_path / "run")
    assert ((tmp_path / "run" / "matrix.csv").read_bytes()
            == (tmp_path / "ref" / "matrix.csv").read_bytes())
    ours, theirs = resumed.model.state_dict(), ref.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # bit for bit
    for key, value in ref.strategy.bank.items():
        assert torch.equal(resumed.strategy.bank[key], value), key
