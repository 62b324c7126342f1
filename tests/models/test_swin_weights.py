"""Loading public Swin checkpoint layouts into SwinEncoder (real files written with torch.save /
safetensors, real strict loads; see cl_bench/models/swin_weights.py for the layouts)."""

from __future__ import annotations

import argparse
import datetime
import logging
import zipfile

import numpy as np
import pytest
import torch
from monai.networks.nets.swin_unetr import SwinUNETR

from cl_bench.errors import DataError
from cl_bench.models.swin import SwinDecoder, SwinEncoder

# 12 * 2**k is divisible by 3 heads on every stage; window 4 divides every stage of a 64^3 input
TINY = dict(in_channels=1, img_size=64, feature_size=12, depths=(1, 1, 1, 1),
            num_heads=(3, 3, 3, 3), window_size=4)
INDEX = "attn.relative_position_index"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    """The reference SwinTransformer state dict; every float tensor random (LayerNorms too)."""
    torch.manual_seed(0)
    enc = SwinEncoder(**TINY)
    with torch.no_grad():
        for p in enc.swinViT.parameters():
            p.normal_()
    return {k: v.clone() for k, v in enc.swinViT.state_dict().items()}


@pytest.fixture(scope="module")
def unetr(ref) -> dict[str, torch.Tensor]:
    """A full MONAI SwinUNETR state dict whose encoder is ``ref``."""
    torch.manual_seed(1)
    model = SwinUNETR(in_channels=1, out_channels=4, feature_size=12, depths=(1, 1, 1, 1),
                      num_heads=(3, 3, 3, 3), window_size=4)
    model.swinViT.load_state_dict(ref)
    return {k: v.clone() for k, v in model.state_dict().items()}


def fc_names(k: str) -> str:
    """MONAI's current MLP names -> the fc1/fc2 names of the released model_swinvit.pt."""
    return k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")


def ssl_heads() -> dict[str, torch.Tensor]:
    return {"rotation_head.weight": torch.randn(4, 96), "rotation_head.bias": torch.randn(4),
            "contrastive_head.weight": torch.randn(512, 96),
            "contrastive_head.bias": torch.randn(512),
            "conv.0.weight": torch.randn(48, 96, 3, 3, 3), "conv.0.bias": torch.randn(48)}


def load(path, **kw) -> SwinEncoder:
    torch.manual_seed(123)  # a different init from the reference
    return SwinEncoder(**{**TINY, **kw}, weights=str(path))


def assert_encoder_equal(enc: SwinEncoder, ref: dict[str, torch.Tensor]) -> None:
    got = enc.swinViT.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


# --- the accepted layouts ------------------------------------------------------------------------

def release(ref, with_index=True, final_norm=False):
    """Layout 1: MONAI's model_swinvit.pt (optionally with an older Swin's final LayerNorm, which
    MONAI's SwinTransformer lacks and load_from does not read)."""
    sd = {"module." + fc_names(k): v for k, v in ref.items() if with_index or not k.endswith(INDEX)}
    if final_norm:
        sd |= {"module.norm.weight": torch.randn(96), "module.norm.bias": torch.randn(96)}
    return {"state_dict": sd}


def ssl_ddp(ref):
    """Layout 2 as MONAI's / BrainSegFounder's pretrain main.py saves a DDP SSLHead."""
    sd = {f"swinViT.{k}": v for k, v in ref.items()} | ssl_heads()
    return {"global_step": 100, "epoch": 2, "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}


def ssl_swin_vit(ref):
    """Layout 2 with the older ``swin_vit`` encoder name, no wrapper."""
    return {f"swin_vit.{k}": v for k, v in ref.items()} | ssl_heads()


@pytest.mark.parametrize("make, layout", [
    (lambda ref, unetr: release(ref), "MONAI SSL release"),
    (lambda ref, unetr: release(ref, with_index=False), "MONAI SSL release"),
    (lambda ref, unetr: release(ref, final_norm=True), "2 legacy keys ignored"),
    (lambda ref, unetr: ssl_ddp(ref), "SSL pre-training"),
    (lambda ref, unetr: ssl_swin_vit(ref), "SSL pre-training"),
    (lambda ref, unetr: {"state_dict": {f"module.{k}": v for k, v in unetr.items()}},
     "Swin UNETR"),
    (lambda ref, unetr: {"state_dict": {f"model.{k}": v for k, v in unetr.items()}, "epoch": 3,
                         "global_step": 30, "pytorch-lightning_version": "2.4.0"}, "Swin UNETR"),
    # research-contributions / BrainSegFounder trainer.save_checkpoint, with pickled extras
    (lambda ref, unetr: {"state_dict": unetr, "args": argparse.Namespace(lr=1e-4, roi_x=96),
                         "best_acc": np.float64(0.9), "epoch": 3}, "Swin UNETR"),
], ids=["release", "release-no-index", "release-final-norm", "ssl-ddp", "ssl-swin_vit",
        "unetr-ddp", "unetr-lightning", "unetr-numpy-args"])
def test_torch_layouts_load_the_encoder_exactly(tmp_path, caplog, ref, unetr, make, layout):
    path = tmp_path / "ckpt.pt"
    torch.save(make(ref, unetr), path)
    with caplog.at_level(logging.DEBUG, logger="cl_bench.models.swin_weights"):  # a detail: cli.log only
        enc = load(path)
    assert_encoder_equal(enc, ref)
    assert enc.pretrained_decoder is None  # decoder_weights="drop"
    assert layout in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_safetensors_with_swinvit_prefix_loads_and_runs_identically(tmp_path, ref, dtype):
    """As scripts/pretrain_swin.py ships the encoder (float tensors possibly in float16)."""
    from safetensors.torch import save_file

    path = tmp_path / "swin.safetensors"
    stored = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ref.items()}
    save_file({f"swinViT.{k}": v.contiguous() for k, v in stored.items()}, str(path))
    enc = load(path)
    expected = {k: v.to(ref[k].dtype) for k, v in stored.items()}
    assert_encoder_equal(enc, expected)
    assert enc.swinViT.patch_embed.proj.weight.dtype == torch.float32
    src = SwinEncoder(**TINY)
    src.swinViT.load_state_dict(expected)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc(x)[0], src(x)[0])


def test_numpy1_pickled_scalars_are_allowlisted(tmp_path, ref):
    """A checkpoint written under numpy 1.x names numpy.core.multiarray.scalar (not numpy._core)."""
    path, old = tmp_path / "new.pt", tmp_path / "old.pt"
    torch.save({"state_dict": release(ref)["state_dict"], "best_acc": np.float64(0.8)}, path)
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(old, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(name, data)
    names = torch.serialization.get_unsafe_globals_in_checkpoint(old)
    assert "numpy.core.multiarray.scalar" in names
    assert_encoder_equal(load(old), ref)


def test_swin_unetr_decoder_is_kept_or_dropped(tmp_path, ref, unetr):
    path = tmp_path / "unetr.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in unetr.items()}}, path)
    enc = load(path, decoder_weights="keep")
    assert_encoder_equal(enc, ref)
    decoder = {k: v for k, v in unetr.items() if not k.startswith("swinViT.")}
    got = enc.pretrained_decoder
    assert got is not None and set(got) == set(decoder)
    assert "out.conv.conv.weight" in got and "encoder10.layer.conv1.conv.weight" in got
    assert all(torch.equal(got[k], v) for k, v in decoder.items())
    # the keys are SwinDecoder's with Swin UNETR's image skip
    SwinDecoder(1, enc.stage_channels, 12, 4, image_skip=True).load_state_dict(got, strict=True)
    assert load(path, decoder_weights="drop").pretrained_decoder is None


# --- refusals ------------------------------------------------------------------------------------

def test_other_in_channels_is_refused_naming_the_config_keys(tmp_path):
    torch.manual_seed(0)
    two = SwinEncoder(**{**TINY, "in_channels": 2})
    path = tmp_path / "t1t2.pt"
    sd = {f"module.swinViT.{k}": v for k, v in two.swinViT.state_dict().items()}
    torch.save({"state_dict": sd}, path)
    with pytest.raises(DataError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and "patch_embed.proj.weight" in msg
    assert "backbone.in_channels" in msg and "window_size" in msg and "num_heads" in msg
    assert "in_channels=2" in msg  # what the checkpoint implies


def test_missing_and_unexpected_block_keys_are_listed(tmp_path, ref):
    sd = {f"swinViT.{k}": v for k, v in ref.items() if k != "layers2.0.blocks.0.attn.qkv.weight"}
    sd["swinViT.layers1.0.blocks.1.norm1.weight"] = torch.ones(12)  # a second block: depth 2
    path = tmp_path / "partial.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(DataError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "missing keys (1): layers2.0.blocks.0.attn.qkv.weight" in msg
    assert "unexpected keys (1): layers1.0.blocks.1.norm1.weight" in msg


calls = []


def _record():
    calls.append("executed")
    return "boom"


class Evil:
    """Unpickling it would run ``_record``: the loader must refuse it without executing."""

    def __reduce__(self):
        return (_record, ())


@pytest.mark.parametrize("extra, name", [(datetime.datetime(2024, 1, 2), "datetime.datetime"),
                                         (Evil(), "_record")], ids=["datetime", "reduce-call"])
def test_pickle_with_other_classes_is_refused_with_the_conversion(tmp_path, ref, extra, name):
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": release(ref)["state_dict"], "extra": extra,
                "args": argparse.Namespace(lr=1e-4)}, path)
    calls.clear()
    with pytest.raises(DataError) as e:
        load(path)
    msg = str(e.value)
    assert not calls
    assert "\n" not in msg and str(path) in msg and name in msg
    assert "argparse.Namespace" not in msg  # allowlisted, so not the culprit
    assert "weights_only=False" in msg and "only for a file you trust" in msg
    assert "unsafe_tensors.pt" in msg


def test_file_without_swin_keys_names_the_accepted_layouts(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save({"state_dict": {"vit.patch_embedding.position_embeddings": torch.zeros(1, 8, 16),
                               "vit.blocks.0.norm1.weight": torch.ones(16)}}, path)
    with pytest.raises(DataError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and "no Swin transformer encoder" in msg
    assert "vit.patch_embedding.position_embeddings" in msg
    assert "model_swinvit.pt" in msg and "swinViT." in msg and ".safetensors" in msg


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04 truncated zip"],
                         ids=["text", "truncated"])
def test_unreadable_files_are_data_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read checkpoint") as e:
        load(path)
    assert str(path) in str(e.value)
    with pytest.raises(DataError, match="no checkpoint file"):
        load(tmp_path / "absent.pt")
