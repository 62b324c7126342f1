#!/usr/bin/env python
"""Pretrain the Swin backbone (``backbone=swin_unetr``) self-supervised on the embedded brains.

MONAI's self-supervised Swin UNETR recipe (Tang et al. 2022, "Self-Supervised Pre-Training of
Swin Transformers for 3D Medical Image Analysis", arXiv 2111.14791; code
Project-MONAI/research-contributions ``SwinUNETR/Pretrain``), reconstructed on our data:

* two views of each volume, each rotated by k·90° (k ~ U{0..3}) in the axial plane and
  corrupted by masked inpainting (random cuboids, together ~30 % of the volume, replaced by
  Gaussian noise);
* **rotation**: a linear head on the pooled deepest stage predicts k (cross-entropy);
* **contrastive**: a linear head (512-d) on the pooled deepest stage; NT-Xent between the two
  views of a volume against the other volumes of the batch (SimCLR, arXiv 2002.05709;
  temperature 0.5 as MONAI's ``Contrast``);
* **inpainting**: a transposed-convolution decoder from the deepest stage to 1/2 resolution
  reconstructs the uncorrupted, rotated view, average-pooled 2x (L1);
* loss = rotation + contrastive + inpainting (MONAI's weights 1, 1, 1); AdamW, one-cycle schedule.

Deviations from MONAI's code: the rotation and contrastive heads read the *average* of the deepest
stage (MONAI's take its first and second token); the decoder has an instance norm + LeakyReLU
between its transposed convolutions and stops at 1/2 resolution (the target is pooled 2x: a
third of the CPU cost of a full-resolution decoder); our windows are 4 voxels
(``backbone.window_size``) and the
volumes 64³ whole brains (MONAI: 96³ random crops of CT/MRI).

Data: synthetic brains of :func:`cl_bench.data.brain_synth.pretraining_volumes`, data seeds
1000+ (the default stream uses seed 0: no evaluation subject is ever seen), labels discarded.

Output: the encoder's state dict under ``swinViT.*`` (MONAI ``SwinUNETR`` keys) as float16
safetensors, and a JSON beside it with the command, arguments, data seeds, the loss curve
(mean per 50 steps), wall time, versions and sha256. The heads and the decoder are dropped.

    python scripts/pretrain_swin_ssl.py --steps 1000 --batch-size 2 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from cl_bench.data.brain_synth import pretraining_volumes
from cl_bench.files import atomic_write, write_text
from cl_bench.models.backbones import ASSETS
from cl_bench.models.swin import SwinEncoder

#: the shipped backbone's architecture (conf/backbone/swin_unetr.yaml)
SWIN = dict(in_channels=1, img_size=64, feature_size=24, depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24), window_size=4)


class SSLHead(nn.Module):
    """Swin encoder + rotation, contrastive and inpainting heads (module docstring).

    Shapes: ``forward(x (B, 1, S, S, S))`` -> rotation logits ``(B, 4)``, contrastive embedding
    ``(B, 512)``, reconstruction ``(B, 1, S/2, S/2, S/2)``.
    """

    def __init__(self, encoder: SwinEncoder):
        super().__init__()
        self.encoder = encoder
        dim = encoder.stage_channels[-1]
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_head = nn.Linear(dim, 512)
        layers, c = [], dim
        for _ in range(4):  # 1/32 -> 1/2 resolution
            layers += [nn.ConvTranspose3d(c, c // 2, 2, stride=2), nn.InstanceNorm3d(c // 2),
                       nn.LeakyReLU(0.01)]
            c //= 2
        layers.append(nn.Conv3d(c, encoder.in_channels, 1))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor):
        deepest, _ = self.encoder(x)
        pooled = deepest.flatten(2).mean(-1)
        return self.rotation_head(pooled), self.contrastive_head(pooled), self.conv(deepest)


def make_view(x: torch.Tensor, gen: torch.Generator, drop: float = 0.3):
    """Rotate each volume by k·90° in the axial plane, then cut random cuboids to noise.

    Returns ``(corrupted view, uncorrupted rotated view, k)``."""
    b, s = x.shape[0], x.shape[-1]
    k = torch.randint(0, 4, (b,), generator=gen)
    rot = torch.stack([torch.rot90(v, int(r), dims=(2, 3)) for v, r in zip(x, k)])
    out = rot.clone()
    for i in range(b):
        covered = 0.0
        while covered < drop:
            side = torch.randint(s // 8, s // 3, (3,), generator=gen)
            lo = [int(torch.randint(0, s - int(d) + 1, (1,), generator=gen)) for d in side]
            sl = (i, slice(None)) + tuple(slice(a, a + int(d)) for a, d in zip(lo, side))
            out[sl] = torch.randn(out[sl].shape, generator=gen)
            covered += float(side.prod()) / s ** 3
    return out, rot, k


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss between paired embeddings ``(B, D)`` (arXiv 2002.05709)."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return nn.functional.cross_entropy(sim, target)


def save_encoder(encoder: SwinEncoder, out: Path) -> None:
    """The encoder as ``swinViT.*`` safetensors (float tensors in float16)."""
    sd = {f"swinViT.{k}": (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
          for k, v in encoder.swinViT.state_dict().items()}
    atomic_write(out, lambda tmp: save_file(sd, str(tmp)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=2, help="volumes per step (2 views each)")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--n-volumes", type=int, default=384)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop early after this much wall time (0: no limit); the schedule is "
                         "the one of --steps")
    ap.add_argument("--out", default=str(ASSETS / "swin_brain_ssl.safetensors"))
    ap.add_argument("--cache-dir", default=os.environ.get(
        "CLBENCH_CACHE", str(Path.home() / ".cache" / "cl_bench")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)

    data = torch.from_numpy(pretraining_volumes(args.n_volumes, args.cache_dir))
    model = SSLHead(SwinEncoder(**SWIN, normalize=True))  # MONAI SSLHead: normalised stages
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.05)
    curve, window, start = [], [], time.time()
    bar = tqdm(range(args.steps), desc="Swin SSL pretraining", mininterval=30)
    for step in bar:
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        x = data[idx]
        v1, t1, k1 = make_view(x, gen)
        v2, t2, k2 = make_view(x, gen)
        rot, con, rec = model(torch.cat([v1, v2]))
        l_rot = nn.functional.cross_entropy(rot, torch.cat([k1, k2]))
        l_con = nt_xent(*con.chunk(2))
        l_rec = nn.functional.l1_loss(rec, nn.functional.avg_pool3d(torch.cat([t1, t2]), 2))
        loss = l_rot + l_con + l_rec
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        window.append([loss.item(), l_rot.item(), l_con.item(), l_rec.item()])
        if len(window) == 50:
            m = np.mean(window, axis=0)
            curve.append({"step": step + 1, "loss": round(float(m[0]), 4),
                          "rotation": round(float(m[1]), 4), "contrastive": round(float(m[2]), 4),
                          "inpainting": round(float(m[3]), 4)})
            window = []
            bar.set_postfix(loss=f"{m[0]:.3f}", rot=f"{m[1]:.3f}", con=f"{m[2]:.3f}",
                            rec=f"{m[3]:.3f}")
            if len(curve) % 10 == 0:
                save_encoder(model.encoder, out)  # a usable checkpoint if stopped
        if args.max_minutes and time.time() - start > 60 * args.max_minutes:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached")
            break
    steps_done = step + 1

    save_encoder(model.encoder, out)
    SwinEncoder(**SWIN, weights=str(out))  # loads strictly, or raises
    repo = Path(__file__).resolve().parent.parent
    shown = out.resolve().relative_to(repo) if out.resolve().is_relative_to(repo) else out
    meta = {"script": "scripts/pretrain_swin_ssl.py",
            "command": "python scripts/pretrain_swin_ssl.py " + " ".join(sys.argv[1:]),
            "args": {**vars(args), "out": str(shown)}, "steps_done": steps_done,
            "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in SWIN.items()},
            "method": "MONAI self-supervised Swin recipe (arXiv 2111.14791): rotation + "
                      "contrastive + masked inpainting; see the script's docstring",
            "data": f"brain_synth.pretraining_volumes: {len(data)} volumes at 64^3, data seeds "
                    f"1000..{1000 + (len(data) - 1) // 32}, both tasks' training subjects",
            "loss_curve": curve,
            "seconds": round(time.time() - start, 1), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "monai": __import__("monai").__version__,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "bytes": out.stat().st_size}
    write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_curve"}, indent=2))


if __name__ == "__main__":
    main()
