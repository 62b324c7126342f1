"""backbone=swin_unetr end to end (tiny: 32^3, one block per stage) and the scratch reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.errors import ConfigError
from cl_bench.models.swin import SwinDecoder, SwinEncoder
from cl_bench.runner import run

CONF = str(Path(__file__).resolve().parents[2] / "conf")
TINY_SWIN = ["backbone=swin_unetr", "backbone.weights=null", "backbone.feature_size=12",
             "backbone.depths=[1,1,1,1]",
             "backbone.num_heads=[3,3,3,3]", "backbone.decoder_feature_size=4",
             # a Swin UNETR decoder per task (the earlier protocol, now an ablation); the shared
             # decoder of the default is tested in test_shared_decoder.py
             "backbone.decoder=unetr"]


def tiny_cfg(cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "tasks.size=64", "tasks.n_train=2",
            "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
            "tasks.n_val=1", "tasks.n_test=2", f"tasks.cache_dir={cache}",
            "train.max_steps=4", "train.progress_bar=false", "logger=none",
            "train.checkpoint_every_n_epochs=0", *TINY_SWIN, *overrides])


def test_stage_shapes_and_decoder_reads_only_the_backbone():
    torch.manual_seed(0)
    enc = SwinEncoder(img_size=64, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3))
    x = torch.randn(2, 1, 64, 64, 64)
    deepest, stages = enc(x)
    assert [tuple(s.shape) for s in stages] == [(2, 12 * 2 ** k, 64 >> (k + 1), 64 >> (k + 1),
                                                 64 >> (k + 1)) for k in range(5)]
    assert deepest is stages[-1]
    dec = SwinDecoder(1, enc.stage_channels, 4, 3)
    assert not hasattr(dec, "encoder1")  # no raw-image path: the image is not an input
    assert tuple(dec(None, deepest, stages, None).shape) == (2, 3, 64, 64, 64)
    with_skip = SwinDecoder(1, enc.stage_channels, 12, 3, image_skip=True)
    assert tuple(with_skip(None, deepest, stages, x).shape) == (2, 3, 64, 64, 64)


def test_bad_sizes_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="backbone.img_size"):
        SwinEncoder(img_size=48)
    with pytest.raises(ConfigError, match="backbone.num_heads"):
        SwinEncoder(img_size=64, feature_size=10, num_heads=(3, 6, 12, 24))
    with pytest.raises(ConfigError, match="backbone.decoder_weights"):
        SwinEncoder(img_size=64, feature_size=12, num_heads=(3, 3, 3, 3), decoder_weights="x")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("swin_cache")


def _outputs(model, strategy, task, x):
    model.eval()
    strategy.activate(task)
    with torch.no_grad():
        return model(x, task.name).clone()


def test_lora_on_swin_keeps_old_task_scores_and_adapts_attention_only(cache, tmp_path):
    out = run(tiny_cfg(cache, "strategy=lora"), tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["per_task"]["tumour_seg"]["bwt"] == 0.0
    params = json.loads((tmp_path / "params.json").read_text())
    seg = params["tasks"]["tumour_seg"]
    assert 0 < seg["adapter"] < params["backbone_params"]
    # what trains is split into the task's adapters and its head (the decoder); no backbone
    assert seg["trainable"] == seg["adapter"] + seg["head"] and seg["trainable_backbone"] == 0
    assert seg["decoder"] == seg["head"] and params["tasks"]["brain_age"]["decoder"] == 0
    assert seg["adapter_pct_of_backbone"] == pytest.approx(
        100 * seg["adapter"] / params["backbone_params"])
    # the movement probe: base weights unmoved, the task's adapter measured per stage
    movement = json.loads((tmp_path / "probes.json").read_text())["movement"]
    stage1 = movement["after_tumour_seg"]["stage1"]
    assert stage1["rel_change"] == 0 and stage1["adapter_rel"] >= 0
    assert movement["after_tumour_seg"]["stage0"]["adapter_rel"] == 0  # no LoRA target there
    # peft put LoRA on every block's attention projections, and nowhere else
    lora_layers = {n.rsplit(".lora_", 1)[0] for n, _ in out.model.backbone.named_parameters()
                   if "lora_A" in n}
    assert lora_layers and all(n.endswith(("attn.qkv", "attn.proj")) for n in lora_layers)
    assert len(lora_layers) == 2 * 4  # 4 stages x 1 block x (qkv, proj)



def test_lora_adapters_do_not_change_task1_output_when_task2_trains(cache, tmp_path):
    """Direct check: snapshot task 1's outputs, train task 2's adapter, compare exactly."""
    from cl_bench.config import build
    from cl_bench.strategies.lora import LoRA

    cfg = tiny_cfg(cache, "strategy=lora")
    torch.manual_seed(0)
    model = build(cfg.backbone, "backbone")
    stream = build(cfg.tasks, "tasks")
    model.add_heads(stream)
    strategy = LoRA(rank=2)
    strategy.setup(model, stream)
    x = stream[0].test[0]["image"][None]
    strategy.before_task(0, stream[0])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # "trained" task 1 adapter and decoder
    ref = _outputs(model, strategy, stream[0], x)
    strategy.before_task(1, stream[1])
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        y = model(stream[1].train[0]["image"][None], stream[1].name)
        (y ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(ref, _outputs(model, strategy, stream[0], x))


@pytest.mark.parametrize("strategy, norm", [("seq_ft", "layer"), ("seq_lp", "batch")])
def test_baselines_run_on_swin(strategy, norm, cache, tmp_path):
    cfg = tiny_cfg(cache, f"strategy={strategy}", f"backbone.regression_norm={norm}")
    out = run(cfg, tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.shape == (3, 2) and np.isfinite(R.to_numpy()).all()
    head = out.model.heads["brain_age"]
    # the age head is a linear probe of the final stage by default
    assert head.stages == (4,) and not head.rectify and isinstance(head.mlp, torch.nn.Linear)
    assert head.mlp.in_features == out.model.encoder.stage_channels[-1]
    probes = json.loads((tmp_path / "probes.json").read_text())
    movement, reliance = probes["movement"], probes["reliance"]
    stages = [f"stage{k}" for k in range(5)]
    assert list(movement["after_brain_age"]) == stages
    # reliance: tumour_seg's Dice with each decoder input replaced by its training mean, on
    # the validation subjects, after each task (both files written)
    assert set(reliance) == {"after_tumour_seg", "after_brain_age"}
    for row in reliance.values():
        assert row["task"] == "tumour_seg" and row["split"] == "val"
        assert list(row["dice"])[:6] == ["none", *stages]
        assert {"stages1-4", "all_but_stage1", "all_but_stage4"} <= set(row["dice"])
        assert all(0 <= d <= 1 for d in row["dice"].values())
    rel = pd.read_csv(tmp_path / "probes_reliance.csv")
    assert len(rel) == 2 * 11 and {"none", *stages, "stages1-4"} <= set(rel["input"])
    assert (tmp_path / "probes_movement.csv").is_file()
    if strategy == "seq_lp":
        assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
        assert reliance["after_brain_age"] == reliance["after_tumour_seg"]  # nothing moved
        assert all(movement[r][s]["rel_change"] == 0 for r in movement for s in stages)
        # the frozen backbone is the one the age head was calibrated on: its running statistics
        # are the training set's pooled-feature mean and variance, never updated (track off)
        from cl_bench.config import build_stream
        task = build_stream(cfg)[1]
        assert not head.track
        with torch.no_grad():
            x = torch.stack([task.train[i]["image"] for i in range(len(task.train))])
            pooled = head.pooled(out.model.backbone(x)[1])
        torch.testing.assert_close(head.running_mean, pooled.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.running_var, pooled.var(0, unbiased=False),
                                   rtol=1e-5, atol=1e-6)
    else:
        # full fine-tuning: the age task moves every stage of the backbone
        assert head.norm == "layer" and not head.track  # the default keeps no statistics
        assert all(movement["after_brain_age"][s]["rel_change_task"] > 0 for s in stages)
        assert all(movement["after_tumour_seg"][s]["rel_change_task"] > 0 for s in stages)
    assert out.metrics["complete"]



def test_reliance_probe_scores_in_the_runs_precision(cache, tmp_path):
    # the probe's "none" entry (no input replaced) is the row's validation Dice in R: the probe
    # runs its forward passes in the run's precision (here bf16 autocast), as R's evaluation does
    run(tiny_cfg(cache, "strategy=lora", "hardware.precision=bf16-mixed"), tmp_path)
    reliance = json.loads((tmp_path / "probes.json").read_text())["reliance"]
    r_val = pd.read_csv(tmp_path / "matrix_val.csv", index_col=0)
    for row, found in reliance.items():
        assert found["dice"]["none"] == pytest.approx(r_val.loc[row, "tumour_seg"], rel=1e-5)

def test_calibration_fills_the_frozen_feature_cache(cache):
    """seq_lp's age task: the calibration pass computes each training sample's backbone
    outputs once; training then reads them (no second pass) and gets the same values."""
    from cl_bench.config import build
    from cl_bench.models.feature_cache import FeatureCache
    cfg = tiny_cfg(cache, "strategy=seq_lp", "tasks.n_train=3", "tasks.n_val=1",
                   "backbone.regression_norm=batch")  # the head with statistics to calibrate
    torch.manual_seed(0)
    model = build(cfg.backbone, "backbone")
    stream = build(cfg.tasks, "tasks")
    model.add_heads(stream)
    task = stream[1]
    seen = []
    model.backbone.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    features = FeatureCache(len(task.train))
    assert model.calibrate_head(task, 2, features)  # batches of 2 and 1
    assert seen == [2, 1] and sorted(features.items) == [0, 1, 2]
    index = torch.tensor([2, 0])
    x = torch.stack([task.train[int(i)]["image"] for i in index])
    model.train()
    got = features(model.backbone, x, index)
    assert seen == [2, 1]  # read from the cache
    with torch.no_grad():
        want = model.backbone(x)
    torch.testing.assert_close(got[1][0], want[1][0], rtol=0, atol=1e-6)


def test_regression_head_is_a_linear_probe_of_the_final_stage_with_running_statistics():
    from cl_bench.models.swin import PooledRegressionHead
    torch.manual_seed(0)
    channels = [12 * 2 ** k for k in range(5)]
    stages = [torch.randn(6, c, 4, 4, 4) * (k + 1) + k for k, c in enumerate(channels)]
    layer = PooledRegressionHead(channels)  # defaults: final stage, plain average, layer norm
    assert isinstance(layer.mlp, torch.nn.Linear) and layer.mlp.in_features == 192
    pooled = layer.pooled(stages)
    torch.testing.assert_close(pooled, stages[4].mean((2, 3, 4)))
    z = layer.embed(None, stages)  # per subject: zero mean, unit variance over the features
    torch.testing.assert_close(z.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    layer.train()
    torch.testing.assert_close(layer.embed(None, [s + 3.0 for s in stages]), z)  # no state
    head = PooledRegressionHead(channels, norm="batch")
    head.calibrate(pooled)
    head.eval()
    z = head.embed(None, stages)
    torch.testing.assert_close(z.mean(0), torch.zeros(192), atol=1e-5, rtol=0)
    var = pooled.var(0, unbiased=False)
    torch.testing.assert_close(z.var(0, unbiased=False), var / (var + head.eps))
    assert head(None, None, stages, None).shape == (6,)
    assert set(head.state_dict()) >= {"running_mean", "running_var"}  # saved (resume)
    # training without track (frozen backbone): the statistics stay the calibrated ones
    head.train()
    mean0 = head.running_mean.clone()
    shifted = [s + 3.0 for s in stages]
    head(None, None, shifted, None)
    assert torch.equal(head.running_mean, mean0)
    # with track (a backbone that trains): they move towards the batch's by `momentum`
    head.track = True
    head(None, None, shifted, None)
    torch.testing.assert_close(head.running_mean,
                               mean0 + head.momentum * (head.pooled(shifted).mean(0) - mean0))
    head.eval()
    before = head.running_mean.clone()
    head(None, None, stages, None)  # evaluation never updates them
    assert torch.equal(head.running_mean, before)
    # the shallow-stage ablation: ReLU-averaged stages 0-1
    shallow = PooledRegressionHead(channels, stages=(0, 1), rectify=True)
    assert shallow.mlp.in_features == 36
    torch.testing.assert_close(shallow.pooled(stages)[:, :12], stages[0].relu().mean((2, 3, 4)))
    assert PooledRegressionHead(channels, width=8).mlp[0].in_features == 192
    with pytest.raises(ConfigError, match="backbone.regression_stages"):
        PooledRegressionHead(channels, stages=(5,))
    with pytest.raises(ConfigError, match="backbone.regression_stages"):
        PooledRegressionHead(channels, stages=())
    with pytest.raises(ConfigError, match="backbone.regression_norm"):
        PooledRegressionHead(channels, norm="group")


def test_linear_segmentation_head_is_linear_in_the_stages():
    from cl_bench.models.swin import LinearSegmentationHead
    torch.manual_seed(0)
    channels = [12 * 2 ** k for k in range(5)]
    head = LinearSegmentationHead(channels, 4)
    assert sum(p.numel() for p in head.parameters()) == sum(channels) * 4 + 5 * 4
    stages = [torch.randn(2, c, 32 >> k, 32 >> k, 32 >> k) for k, c in enumerate(channels)]
    image = torch.zeros(2, 1, 64, 64, 64)
    out = head(None, stages[-1], stages, image)
    assert out.shape == (2, 4, 64, 64, 64)
    doubled = head(None, None, [2 * s for s in stages], image)
    bias = sum(c.bias for c in head.convs).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(doubled - bias, 2 * (out - bias), rtol=1e-4, atol=1e-4)


def test_scratch_reference_trains_a_fresh_unet_per_task(cache, tmp_path):
    from monai.networks.nets import BasicUNet
    out = run(tiny_cfg(cache, "strategy=scratch", "strategy.features=[4,4,8,8,16,4]"), tmp_path)
    model = out.model
    assert isinstance(model.heads["tumour_seg"].net, BasicUNet)
    assert sum(p.numel() for p in model.backbone.parameters()) == 0  # the FM is not used
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    # nothing is shared: training brain_age cannot change tumour_seg
    assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["backbone_params"] == 0
    assert params["tasks"]["tumour_seg"]["trainable"] == sum(
        p.numel() for p in model.heads["tumour_seg"].parameters())


def test_scratch_refuses_a_class_incremental_stream(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["tasks=digits", "tasks.scenario=class_il",
                                           "strategy=scratch", "logger=none",
                                           "train.progress_bar=false"])
    with pytest.raises(ConfigError, match="strategy=scratch"):
        run(cfg, tmp_path)


def test_linear_decoder_is_the_paper_like_budget(cache, tmp_path):
    out = run(tiny_cfg(cache, "strategy=lora", "backbone.decoder=linear"), tmp_path)
    from cl_bench.models.swin import LinearSegmentationHead
    assert isinstance(out.model.heads["tumour_seg"], LinearSegmentationHead)
    seg = json.loads((tmp_path / "params.json").read_text())["tasks"]["tumour_seg"]
    assert seg["head"] == seg["decoder"] == sum(out.model.encoder.stage_channels) * 4 + 5 * 4
    assert seg["trainable"] == seg["adapter"] + seg["head"]
    reliance = json.loads((tmp_path / "probes.json").read_text())["reliance"]
    assert list(reliance["after_tumour_seg"]["dice"])[:6] == ["none"] + [f"stage{k}"
                                                                         for k in range(5)]



def test_the_moved_factories_keep_the_paths_run_directories_recorded():
    """``backbone._target_`` of a run's checkpoints/config.yaml (compared key by key on resume)
    names ``cl_bench.models.continual.make_*``: those paths still give the families' factories."""
    from omegaconf import OmegaConf

    from cl_bench.config import locate
    from cl_bench.models import backbones, swin

    assert locate("cl_bench.models.continual.make_swin_model") is swin.make_swin_model
    assert locate("cl_bench.models.continual.make_model") is backbones.make_model
    assert locate("cl_bench.models.continual.make_unet_model") is backbones.make_unet_model
    assert OmegaConf.load(Path(CONF, "backbone", "swin_unetr.yaml"))._target_ == (
        "cl_bench.models.continual.make_swin_model")
    with pytest.raises(AttributeError, match="make_resnet_model"):
        locate("cl_bench.models.continual.make_resnet_model")
