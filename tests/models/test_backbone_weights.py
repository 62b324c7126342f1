"""Loading real foundation-model checkpoints into the MONAI ViT encoder."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR

from cl_bench.errors import DataError
from cl_bench.models.backbones import ViTEncoder

SMALL = dict(in_channels=1, img_size=32, patch_size=16, hidden_size=48, mlp_dim=96, num_layers=2,
             num_heads=2)


def test_unetr_checkpoint_in_a_lightning_wrapper_loads_the_encoder(tmp_path):
    torch.manual_seed(0)
    # MONAI's UNETR hard-codes 12 layers and patch 16; build one and keep its ViT shape
    unetr = UNETR(in_channels=1, out_channels=4, img_size=32, feature_size=8, hidden_size=48,
                  mlp_dim=96, num_heads=2)
    path = tmp_path / "unetr.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in unetr.state_dict().items()}}, path)
    enc = ViTEncoder(**{**SMALL, "num_layers": 12}, weights=str(path))
    for k, v in enc.vit.state_dict().items():
        assert torch.equal(v, unetr.vit.state_dict()[k]), k


def test_safetensors_vit_state_dict_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = ViTEncoder(**SMALL)
    path = tmp_path / "vit.safetensors"
    save_file({f"backbone.vit.{k}": v.contiguous() for k, v in src.vit.state_dict().items()}, path)
    dst = ViTEncoder(**SMALL, weights=str(path))
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.equal(src(x)[0], dst(x)[0])


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path):
    src = ViTEncoder(**{**SMALL, "hidden_size": 64, "num_heads": 2, "num_layers": 3})
    path = tmp_path / "other.pt"
    sd = dict(src.vit.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(DataError) as err:
        ViTEncoder(**SMALL, weights=str(path))
    msg = str(err.value)
    assert str(path) in msg
    # block 2 (13 tensors) does not exist in a 2-layer model, nor does "extra.weight"
    assert "unexpected keys (14)" in msg and "blocks.2.attn.qkv.weight" in msg
    assert "shape mismatches (29)" in msg and "checkpoint (64, 64) vs model (48, 48)" in msg


def test_a_compiled_vit_saved_with_its_training_args_loads_as_a_swin_one_would(tmp_path):
    """One weights reader for every backbone (cl_bench.models.weights): the ``_orig_mod.``
    prefix of a torch.compile'd module and a pickled ``argparse.Namespace`` beside the state
    dict (as research training scripts save them) load into the ViT as into the Swin."""
    import argparse

    src = ViTEncoder(**SMALL)
    path = tmp_path / "compiled.pt"
    torch.save({"args": argparse.Namespace(lr=1e-4, epochs=3),
                "state_dict": {f"_orig_mod.vit.{k}": v for k, v in src.vit.state_dict().items()}},
               path)
    dst = ViTEncoder(**SMALL, weights=str(path))
    for k, v in dst.vit.state_dict().items():
        assert torch.equal(v, src.vit.state_dict()[k]), k


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(DataError, match=r"evil.pt pickles objects other than tensors \(builtins.object\)"):
        ViTEncoder(**SMALL, weights=str(path))


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(DataError, match="backbone.weights.*nope.pt"):
        ViTEncoder(**SMALL, weights=str(tmp_path / "nope.pt"))
