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
TINY_SWIN = ["backbone=swin_unetr", "backbone.weights=null", "backbone.feature_size=12", "backbone.depths=[1,1,1,1]",
             "backbone.num_heads=[3,3,3,3]", "backbone.decoder_feature_size=4",
             "backbone.regression_width=16"]


def tiny_cfg(cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "tasks.size=64", "tasks.n_train=2", "tasks.n_test=2", f"tasks.cache_dir={cache}",
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
    assert 0 < params["tasks"]["tumour_seg"]["adapter"] < params["backbone_params"]
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


@pytest.mark.parametrize("strategy", ["seq_ft", "seq_lp"])
def test_baselines_run_on_swin(strategy, cache, tmp_path):
    cfg = tiny_cfg(cache, f"strategy={strategy}")
    out = run(cfg, tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.shape == (3, 2) and np.isfinite(R.to_numpy()).all()
    if strategy == "seq_lp":
        assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
        # the frozen backbone is the one the age head was calibrated on: its standardisation
        # is the training set's pooled-feature mean and sqrt(var + eps)
        from cl_bench.config import build
        task = build(cfg.tasks, "tasks")[1]
        head = out.model.heads[task.name]
        with torch.no_grad():
            x = torch.stack([task.train[i]["image"] for i in range(len(task.train))])
            pooled = head.pooled(out.model.backbone(x)[1])
        torch.testing.assert_close(head.shift, pooled.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.scale, (pooled.var(0, unbiased=False) + head.eps).sqrt(),
                                   rtol=1e-5, atol=1e-6)
    assert out.metrics["complete"]


def test_calibration_fills_the_frozen_feature_cache(cache):
    """seq_lp's age task: the calibration pass computes each training sample's backbone
    outputs once; training then reads them (no second pass) and gets the same values."""
    from cl_bench.config import build
    from cl_bench.models.feature_cache import FeatureCache
    cfg = tiny_cfg(cache, "strategy=seq_lp", "tasks.n_train=3")
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


def test_regression_head_standardises_its_shallow_stage_features():
    from cl_bench.models.swin import PooledRegressionHead
    torch.manual_seed(0)
    channels = [12 * 2 ** k for k in range(5)]
    head = PooledRegressionHead(channels)  # defaults: stages 0-1, linear
    assert isinstance(head.mlp, torch.nn.Linear) and head.mlp.in_features == 12 + 24
    stages = [torch.randn(6, c, 4, 4, 4) * (k + 1) + k for k, c in enumerate(channels)]
    pooled = head.pooled(stages)
    assert pooled.shape == (6, 36)
    torch.testing.assert_close(pooled[:, :12], stages[0].relu().mean((2, 3, 4)))
    head.calibrate(pooled)
    z = head.embed(None, stages)
    torch.testing.assert_close(z.mean(0), torch.zeros(36), atol=1e-5, rtol=0)
    var = pooled.var(0, unbiased=False)
    torch.testing.assert_close(z.var(0, unbiased=False), var / (var + head.eps))
    assert head(None, None, stages, None).shape == (6,)
    assert set(head.state_dict()) >= {"shift", "scale"}  # saved with the model (resume)
    assert PooledRegressionHead(channels, width=8, stages=(4,)).mlp[0].in_features == 192
    with pytest.raises(ConfigError, match="backbone.regression_stages"):
        PooledRegressionHead(channels, stages=(5,))
    with pytest.raises(ConfigError, match="backbone.regression_stages"):
        PooledRegressionHead(channels, stages=())


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
