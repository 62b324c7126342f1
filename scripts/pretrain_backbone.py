#!/usr/bin/env python
"""Pretrain the default backbone (tiny 3D ViT) by masked autoencoding on the embedded brains.

Offline we have no brain-MRI foundation model, so cl_bench ships its own small one: MONAI's
``MaskedAutoEncoderViT`` (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners",
arXiv 2111.06377; 3D use as in e.g. Chen et al. 2023, arXiv 2204.11716) trained on synthetic
brains from :mod:`cl_bench.data.brain_synth` drawn with data seeds 1000+ (the default stream uses
seed 0, so no evaluation subject is ever seen). Loss: MSE on the masked patches of per-patch
normalised voxels (MAE's ``norm_pix_loss``), mask ratio 0.75.

The encoder is saved under the keys of MONAI's ``ViT`` (``patch_embedding.*``, ``blocks.*``) in
float16 safetensors, with ``norm.*`` (absent from MONAI's MAE encoder) at the identity
(weight 1, bias 0); the MAE's class token and decoder are dropped. Deviation: MONAI's MAE prepends
a class token during pretraining, our ``ViT`` (``classification=False``) has none.

    python scripts/pretrain_backbone.py --steps 8000 --batch-size 8   # ~20 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import MaskedAutoEncoderViT
from safetensors.torch import save_file
from tqdm.auto import tqdm

from cl_bench.data.brain_synth import pretraining_volumes
from cl_bench.models.backbones import PRETRAINED, ViTEncoder

TINY = dict(in_channels=1, img_size=64, patch_size=16, hidden_size=192, mlp_dim=768,
            num_layers=12, num_heads=3)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, N, p³·C)`` in the raster order of MONAI's conv patch embedding."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // p, p, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (d // p) * (h // p) * (w // p), -1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random left-right flip, intensity scaling x U(0.9, 1.1), shifts of up to 4 voxels."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(2), x)
    x = x * (0.9 + 0.2 * torch.rand(b, 1, 1, 1, 1, generator=gen))
    shifts = torch.randint(-4, 5, (3,), generator=gen).tolist()
    return torch.roll(x, shifts=shifts, dims=(2, 3, 4))


def encoder_state(mae: MaskedAutoEncoderViT) -> dict[str, torch.Tensor]:
    """MAE encoder -> MONAI ViT state dict (see module docstring), checked key by key."""
    own = ViTEncoder(**TINY).vit.state_dict()
    src = mae.state_dict()
    out = {}
    for k, ref in own.items():
        if k == "norm.weight":
            v = torch.ones_like(ref)
        elif k == "norm.bias":
            v = torch.zeros_like(ref)
        else:
            v = src[k]
        assert v.shape == ref.shape, (k, v.shape, ref.shape)
        out[k] = v.detach().to(torch.float16).contiguous()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--n-volumes", type=int, default=384)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--out", default=str(PRETRAINED["vit3d_tiny_mae"]))
    ap.add_argument("--cache-dir", default=os.environ.get(
        "CLBENCH_CACHE", str(Path.home() / ".cache" / "cl_bench")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data = torch.from_numpy(pretraining_volumes(args.n_volumes, args.cache_dir))
    mae = MaskedAutoEncoderViT(**TINY, masking_ratio=args.mask_ratio, decoder_hidden_size=144,
                               decoder_mlp_dim=576, decoder_num_layers=2, decoder_num_heads=4,
                               pos_embed_type="sincos", decoder_pos_embed_type="sincos")
    opt = torch.optim.AdamW(mae.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.05)
    losses, start = [], time.time()
    bar = tqdm(range(args.steps), desc="MAE pretraining")
    for step in bar:
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x = augment(data[idx], gen)
        pred, mask = mae(x)
        target = patchify(x, TINY["patch_size"])
        mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mu) / (var + 1e-6).sqrt()
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(encoder_state(mae), str(out))
    ViTEncoder(**TINY, weights=str(out))  # loads strictly, or raises
    meta = {"script": "scripts/pretrain_backbone.py", "args": vars(args),
            "method": "masked autoencoder (arXiv 2111.06377), MONAI MaskedAutoEncoderViT",
            "data": f"brain_synth volumes, data seeds 1000..; {len(data)} volumes at 64^3",
            "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
            "seconds": round(time.time() - start, 1), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "monai": __import__("monai").__version__,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
