"""The shipped pretrained checkpoint of the default backbone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cl_bench.errors import DataError
from cl_bench.models.backbones import PRETRAINED, ViTEncoder

CKPT = PRETRAINED["vit3d_tiny_mae"]


def test_shipped_checkpoint_is_small_and_loads_strictly():
    assert CKPT.is_file() and CKPT.stat().st_size <= 20 * 2**20
    meta = json.loads(CKPT.with_suffix(".json").read_text())
    assert meta["loss_last_50"] < meta["loss_first_50"]  # the MAE did learn
    enc = ViTEncoder(weights="vit3d_tiny_mae")  # the default vit3d_tiny config
    sd = load_file(str(CKPT))
    for k, v in enc.vit.state_dict().items():
        assert torch.equal(v, sd[k].float()), k
    assert not torch.equal(enc.vit.state_dict()["blocks.0.attn.qkv.weight"],
                           ViTEncoder().vit.state_dict()["blocks.0.attn.qkv.weight"])


def test_corrupt_copy_names_the_file(tmp_path):
    bad = tmp_path / "vit.safetensors"
    bad.write_bytes(CKPT.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"cannot read safetensors checkpoint {bad}"):
        ViTEncoder(weights=str(bad))


def test_renamed_key_is_listed(tmp_path):
    sd = load_file(str(CKPT))
    sd["blocks.0.attn.qkv_renamed.weight"] = sd.pop("blocks.0.attn.qkv.weight")
    path = tmp_path / "renamed.safetensors"
    save_file(sd, str(path))
    with pytest.raises(DataError) as err:
        ViTEncoder(weights=str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): blocks.0.attn.qkv.weight" in msg
    assert "unexpected keys (1): blocks.0.attn.qkv_renamed.weight" in msg


def test_position_embedding_must_match_the_grid(tmp_path):
    shutil.copy(CKPT, tmp_path / "v.safetensors")
    with pytest.raises(DataError, match="patch_embedding.position_embeddings"):
        ViTEncoder(img_size=32, weights=str(tmp_path / "v.safetensors"))


def test_shipped_2d_checkpoint_loads_into_vit2d_mnist_and_was_trained_without_mnist():
    """The split-MNIST backbone: pretrained on sklearn's UCI digits, loads strictly."""
    path = PRETRAINED["vit2d_mnist_uci"]
    assert path.is_file() and path.stat().st_size <= 2**20
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["loss_last_100"] < 0.25 * meta["loss_first_100"]
    assert meta["held_out_accuracy"] >= 0.95  # on held-out UCI digits
    assert "no MNIST image" in meta["data"]
    enc = ViTEncoder(in_channels=1, img_size=28, patch_size=7, hidden_size=64, mlp_dim=128,
                     num_layers=2, num_heads=4, spatial_dims=2, weights="vit2d_mnist_uci")
    sd = load_file(str(path))
    for k, v in enc.vit.state_dict().items():
        assert torch.equal(v, sd[k].float()), k


def test_shipped_unet_checkpoint_loads_into_unet2d_and_misfits_are_named(tmp_path):
    """seg_mnist's backbone: pretrained on canvases of UCI digits, loads strictly."""
    from cl_bench.models.backbones import UNetEncoder

    path = PRETRAINED["unet2d_uci"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["loss_last_100"] < 0.1 * meta["loss_first_100"]
    assert meta["held_out_miou"] >= 0.6 and "no MNIST image" in meta["data"]
    enc = UNetEncoder(weights="unet2d_uci")
    sd = load_file(str(path))
    for k, v in enc.unet.state_dict().items():
        assert torch.equal(v, sd[k]), k
    with pytest.raises(DataError, match="does not fit the configured UNet"):
        UNetEncoder(in_channels=3, weights="unet2d_uci")  # RGB UNet, 1-channel checkpoint


def test_shipped_swin_checkpoint_is_the_default_backbone_and_loads_strictly():
    """The flagship foundation model: a whole Swin UNETR (scripts/pretrain_swin.py), its
    provenance and probe table in the card, encoder and decoder loaded strictly."""
    import hashlib
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from cl_bench.models.swin import SwinEncoder

    path = PRETRAINED["swin_brain_fm"]
    assert path.is_file() and path.stat().st_size <= 20 * 2**20
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    curve = meta["loss_curve"]
    assert curve[-1]["tissue"] < 0.5 * curve[0]["tissue"]  # it learned the tissues
    assert "downstream" not in meta["pool"]["labels"] and meta["pool"]["volumes"] >= 512
    # the card's probe table: the frozen model beats a random one where the heads read
    probes = {(r["task"], r["stage"], r["metric"]): r for r in meta["probes"]}
    assert probes[("tumour_seg", "decoder", "dice")]["better"]
    # the age head reads the decoder's pooled features (the rule: the lower validation ridge MAE
    # of stage 4 and the decoder; results/reference/swin_brain_fm/README.md)
    assert probes[("brain_age", "decoder", "mae")]["better"]
    assert (probes[("brain_age", "decoder", "mae")]["value"]
            < probes[("brain_age", "stage4", "mae")]["value"])
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config")
    assert cfg.backbone.name == "swin_unetr" and cfg.backbone.weights == "swin_brain_fm"
    # the age head reads the final representation: with the shared decoder, its features (5)
    assert cfg.backbone.decoder == "shared" and cfg.backbone.regression_stages is None
    arch = {k: cfg.backbone[k] for k in ("feature_size", "window_size", "in_channels",
                                         "decoder_feature_size")}
    enc = SwinEncoder(img_size=64, depths=tuple(cfg.backbone.depths),
                      num_heads=tuple(cfg.backbone.num_heads), weights="swin_brain_fm",
                      decoder=True, **arch)
    sd = load_file(str(path))
    for k, v in enc.swinViT.state_dict().items():
        assert torch.equal(v, sd[f"swinViT.{k}"].to(v.dtype)), k
    for k, v in enc.decoder.state_dict().items():
        assert torch.equal(v, sd[k].to(v.dtype)), k
    rand = SwinEncoder(img_size=64, depths=tuple(cfg.backbone.depths),
                       num_heads=tuple(cfg.backbone.num_heads), decoder=True, **arch)
    key = "layers1.0.blocks.0.attn.qkv.weight"
    assert not torch.equal(enc.swinViT.state_dict()[key], rand.swinViT.state_dict()[key])
    # the earlier encoder-only SSL checkpoint stays loadable (an ablation)
    ssl = SwinEncoder(img_size=64, depths=tuple(cfg.backbone.depths),
                      num_heads=tuple(cfg.backbone.num_heads), weights="swin_brain_ssl",
                      feature_size=cfg.backbone.feature_size, window_size=cfg.backbone.window_size)
    assert ssl.decoder is None
