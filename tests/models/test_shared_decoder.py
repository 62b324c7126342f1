"""backbone.decoder=shared: a whole Swin UNETR as the foundation model (encoder + decoder shared by
the tasks, a 1x1x1 head per segmentation task, LoRA in encoder and decoder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.errors import ConfigError
from cl_bench.models.swin import DecoderOutputHead, SwinEncoder
from cl_bench.probes import reliance_variants
from cl_bench.runner import run

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
TINY = dict(img_size=64, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3))
SMALL_STREAM = ["tasks.size=64", "tasks.n_train=2", "tasks.age_n_train=null",
                "tasks.age_n_test=null", "tasks.n_val_by_task=null", "tasks.n_val=1",
                "tasks.n_test=2"]
TINY_SWIN = ["backbone=swin_unetr", "backbone.weights=null", "backbone.feature_size=12",
             "backbone.depths=[1,1,1,1]", "backbone.num_heads=[3,3,3,3]",
             "backbone.decoder_feature_size=4", "backbone.decoder=shared"]


def tiny_cfg(cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            *SMALL_STREAM, f"tasks.cache_dir={cache}", "train.max_steps=3",
            "train.progress_bar=false", "logger=none", "train.checkpoint_every_n_epochs=0",
            "hardware.precision=32-true", *TINY_SWIN, *overrides])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared_cache")


def test_forward_appends_the_decoder_features_and_encode_decode_are_its_halves():
    torch.manual_seed(0)
    enc = SwinEncoder(**TINY, decoder=True, decoder_feature_size=4)
    enc.eval()
    x = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        deepest, stages = enc(x)
        assert len(stages) == 6 and deepest is stages[4]
        assert tuple(stages[5].shape) == (2, 4, 64, 64, 64)
        assert enc.feature_channels == [12, 24, 48, 96, 192, 4]
        halves = enc.decode(enc.encode(x))
        torch.testing.assert_close(halves, stages[5])
        enc.run_decoder = False
        assert len(enc(x)[1]) == 5
    head = DecoderOutputHead(4, 3)
    assert sum(p.numel() for p in head.parameters()) == 4 * 3 + 3
    assert tuple(head(None, deepest, stages, x).shape) == (2, 3, 64, 64, 64)
    with pytest.raises(ValueError, match="backbone.decoder=shared"):
        head(None, deepest, stages[:5], x)
    with pytest.raises(ValueError, match="no shared decoder"):
        SwinEncoder(**TINY).decode(stages)


def test_whole_swin_unetr_checkpoint_round_trips_and_an_encoder_only_one_is_refused(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from pretrain_swin import save_swin_unetr  # the shipped layout: swinViT.* + decoder keys

    torch.manual_seed(0)
    enc = SwinEncoder(**TINY, decoder=True, decoder_feature_size=4)
    path = tmp_path / "fm.safetensors"
    save_swin_unetr(enc, path)
    loaded = SwinEncoder(**TINY, decoder=True, decoder_feature_size=4, weights=str(path))
    for (n, a), (_, b) in zip(enc.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a.to(torch.float16).float(), b.float(), msg=n)  # float16 file
    with pytest.raises(Exception, match="decoder_feature_size"):  # another decoder width
        SwinEncoder(**TINY, decoder=True, decoder_feature_size=8, weights=str(path))
    from safetensors.torch import save_file
    encoder_only = tmp_path / "ssl.safetensors"
    save_file({f"swinViT.{k}": v.contiguous() for k, v in enc.swinViT.state_dict().items()},
              str(encoder_only))
    with pytest.raises(ConfigError, match="backbone.decoder"):
        SwinEncoder(**TINY, decoder=True, decoder_feature_size=4, weights=str(encoder_only))


def test_lora_adapts_encoder_and_decoder_and_an_encoder_stage_age_head_skips_the_decoder(
        cache, tmp_path, monkeypatch):
    # the age head on stage 4 (the default reads the decoder: test_seq_ft_trains_the_decoder...)
    cfg = tiny_cfg(cache, "strategy=lora", "strategy.rank=2",  # <= the tiny decoder's width 4
                   "backbone.regression_stages=[4]")
    calls = []
    from cl_bench.models import swin
    original = swin.SwinEncoder.decode

    def counting(self, stages):
        calls.append(len(stages[0]))
        return original(self, stages)

    monkeypatch.setattr(swin.SwinEncoder, "decode", counting)
    out = run(cfg, tmp_path)
    assert calls  # the tumour task ran the decoder ...
    lora = {n.rsplit(".lora_", 1)[0] for n, _ in out.model.backbone.named_parameters()
            if "lora_A" in n}
    decoder = {n for n in lora if ".decoder." in n}
    assert decoder and all(n.endswith(("conv1.conv", "conv2.conv")) for n in decoder)
    assert len(lora - decoder) == 2 * 4  # attention projections of 4 stages x 1 block
    params = json.loads((tmp_path / "params.json").read_text())
    seg = params["tasks"]["tumour_seg"]
    assert seg["head"] == 4 * 4 + 4  # the 1x1x1 output layer on the decoder's 4 channels
    assert seg["trainable"] == seg["adapter"] + seg["head"] and seg["trainable_backbone"] == 0
    # the age head never runs the decoder, so its adapter has no decoder layers
    age_layers = {n.rsplit(".lora_", 1)[0] for n, _ in out.model.backbone.named_parameters()
                  if "lora_A.brain_age" in n}
    assert age_layers == lora - decoder
    assert 0 < params["tasks"]["brain_age"]["adapter"] < seg["adapter"]
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
    probes = json.loads((tmp_path / "probes.json").read_text())
    assert "decoder" in probes["movement"]["after_tumour_seg"]
    assert probes["movement"]["after_tumour_seg"]["decoder"]["adapter_rel"] > 0
    dice = probes["reliance"]["after_tumour_seg"]["dice"]
    assert list(dice) == list(reliance_variants())
    assert dice["none"] == pytest.approx(
        pd.read_csv(tmp_path / "matrix_val.csv", index_col=0).loc["after_tumour_seg",
                                                                    "tumour_seg"], rel=1e-5)
    # the age head reads stage 4 only: its forward passes never run the decoder
    calls.clear()
    age = out.model.heads["brain_age"]
    x = torch.zeros(2, 1, 64, 64, 64)
    with torch.no_grad():
        out.model(x, "brain_age")
        assert calls == []
        out.model(x, "tumour_seg")
        assert calls == [2]
    assert age.norm == "train" and not age.track


def test_reliance_variants_have_the_joint_rows():
    v = reliance_variants()
    assert v["stages1-4"] == {1, 2, 3, 4} and v["all_but_stage2"] == {0, 1, 3, 4}
    assert list(v)[:6] == ["none", "stage0", "stage1", "stage2", "stage3", "stage4"]
    assert "image" in reliance_variants(image=True)


def test_seq_ft_trains_the_decoder_and_seq_lp_only_the_heads(cache, tmp_path):
    run(tiny_cfg(cache, "strategy=seq_lp"), tmp_path / "lp")
    lp = json.loads((tmp_path / "lp" / "params.json").read_text())["tasks"]
    assert lp["tumour_seg"]["trainable"] == lp["tumour_seg"]["head"] == 20
    # the default age head: a linear layer on the decoder's pooled 4 channels
    assert lp["brain_age"]["trainable"] == 4 + 1
    ft = run(tiny_cfg(cache, "strategy=seq_ft"), tmp_path / "ft")
    assert ft.model.heads["brain_age"].stages == (5,) and ft.model.heads["brain_age"].reads_decoder
    moved = json.loads((tmp_path / "ft" / "probes.json").read_text())["movement"]
    assert moved["after_tumour_seg"]["decoder"]["rel_change_task"] > 0
    assert moved["after_brain_age"]["decoder"]["rel_change_task"] > 0  # the age task trains it too


def test_image_skip_is_refused_on_the_shared_decoder():
    from cl_bench.models.swin import make_swin_model
    with pytest.raises(ConfigError, match="backbone.decoder_image_skip"):
        make_swin_model(feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3),
                        decoder_feature_size=4, decoder="shared", decoder_image_skip=True)
