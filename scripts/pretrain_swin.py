#!/usr/bin/env python
"""Pretrain the flagship foundation model ``swin_brain_fm``: a whole Swin UNETR (encoder and
decoder) on a pool of synthetic brains of its own.

Recipe (chosen by the representation probes on validation subjects, see the model card
``cl_bench/assets/swin_brain_fm.json`` and ``results/reference/swin_brain_fm/README.md``):

* **pool**: :func:`cl_bench.data.brain_synth.pretraining_pool`: half healthy brains of random
  ages, half tumour-bearing brains, generated with the pool's own seeds (no downstream subject,
  whatever a stream's data seed), with no downstream label (no tumour labels, no ages);
* **supervised tissue segmentation** (``tissue``): Swin UNETR's decoder + a 1x1x1 output layer
  predict each voxel's tissue (background, CSF, GM, WM: the generator's maps, argmax), MONAI's
  ``DiceCELoss``; tissue maps teach anatomy directly (DESIGN §11);
* **masked-volume inpainting at full resolution** (``inpaint``, SimMIM-style, Xie et al. 2022,
  arXiv 2111.09886; the inpainting term of MONAI's Swin SSL, Tang et al. 2022, arXiv
  2111.14791): each volume is masked with probability ``--mask-prob``; a masked volume has
  ``--mask-ratio`` of its ``--mask-patch``³ cubes set to 0 (the brain's mean after z-scoring);
  a second 1x1x1 output layer reconstructs the original intensities, L1 on the masked voxels.
  The tissue loss is taken on every voxel, masked or not (tissue from context);
* **global tissue composition** (``volumes``, optional): a linear layer on the pooled final
  stage (the age head's input) predicts the volume of CSF, GM and WM and the brain's volume
  (standardised over the pool; MSE), a global anatomical target for the deepest stage;
* AdamW (weight decay 0.01), linear warm-up then cosine decay, batch ``--batch-size``.

Deviations from MONAI's SSL recipe (rotation + contrastive + inpainting): no rotation (it says
nothing about anatomy) and no contrastive term (at batch 2 it sits at chance, ln(2B-1); DESIGN
§11). The output layers and the composition head are pretraining heads and are not shipped.

Output: ``swin_brain_fm.safetensors``: a Swin UNETR state dict (``swinViT.*`` and the decoder
keys ``encoder2.*`` ... ``decoder1.*``, MONAI names; ``encoder5`` is ours, see SwinDecoder) in
float16, and ``swin_brain_fm.json`` beside it (the model card): command, arguments, pool seeds,
loss curve, wall time, versions, sha256, and the probe table when ``--probe`` is given.

Resumable: the training state (model, optimiser, schedule, random generator, curve) is saved to
``--work-dir`` every ``--save-every`` steps; running the same command again continues from it
bit for bit (the same batches and masks). ``--max-minutes`` stops early (resume later).

    python scripts/pretrain_swin.py --steps 4000 --threads 2 --probe
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from cl_bench.data.brain_synth import POOL_SEED, POOL_SPLIT, pretraining_pool
from cl_bench.files import atomic_write, write_text
from cl_bench.models.backbones import ASSETS
from cl_bench.models.swin import SwinEncoder

#: the shipped foundation model's architecture (conf/backbone/swin_unetr.yaml)
SWIN = dict(in_channels=1, img_size=64, feature_size=24, depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24), window_size=4)
#: its decoder's width at 1/2 resolution (backbone.decoder_feature_size)
DECODER_WIDTH = 12
RECIPES = {"tissue_inpaint": ("tissue", "inpaint"),
           "tissue_inpaint_volumes": ("tissue", "inpaint", "volumes"),
           "tissue": ("tissue",), "inpaint": ("inpaint",)}


class PretrainingModel(nn.Module):
    """Swin UNETR (a :class:`SwinEncoder` with its shared decoder) + pretraining heads.

    Shapes: ``forward(x (B, 1, S, S, S))`` -> tissue logits ``(B, 4, S, S, S)``,
    reconstruction ``(B, 1, S, S, S)``, composition ``(B, 4)`` (standardised volumes).
    """

    def __init__(self, weights: str | None = None):
        super().__init__()
        # fp32 throughout (bf16 autocast made a step ~10x slower on a CPU without AMX: the 3D
        # convolutions); the decoder in channels_last_3d, as the runner's default
        self.backbone = SwinEncoder(**SWIN, decoder=True, decoder_feature_size=DECODER_WIDTH,
                                    weights=weights, decoder_channels_last=True)
        self.tissue = nn.Conv3d(DECODER_WIDTH, 4, 1)
        self.reconstruction = nn.Conv3d(DECODER_WIDTH, 1, 1)
        self.composition = nn.Linear(self.backbone.stage_channels[-1], 4)

    def forward(self, x: torch.Tensor):
        deepest, stages = self.backbone(x)
        features = stages[-1]
        return (self.tissue(features), self.reconstruction(features),
                self.composition(deepest.flatten(2).mean(-1)))


def composition(tissue: np.ndarray) -> np.ndarray:
    """``(N, 4)`` volumes (voxel fractions of the cube) of CSF, GM, WM and the brain, from
    tissue labels ``(N, S, S, S)``."""
    n = tissue.reshape(len(tissue), -1)
    out = [(n == k).mean(1) for k in (1, 2, 3)] + [(n > 0).mean(1)]
    return np.stack(out, 1).astype(np.float32)


def mask_volumes(x: torch.Tensor, gen: torch.Generator, prob: float, ratio: float,
                 patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each volume of ``x`` ``(B, 1, S, S, S)`` with probability ``prob``: ``ratio`` of its
    ``patch``³ cubes set to 0. Returns ``(masked x, mask (B, 1, S, S, S) bool)``."""
    b, s = x.shape[0], x.shape[-1]
    g = s // patch
    chosen = torch.rand(b, generator=gen) < prob
    cubes = torch.rand(b, g ** 3, generator=gen).argsort(1) < int(round(ratio * g ** 3))
    cubes = cubes & chosen[:, None]
    mask = cubes.view(b, 1, g, g, g).repeat_interleave(patch, 2).repeat_interleave(
        patch, 3).repeat_interleave(patch, 4)
    return x.masked_fill(mask, 0.0), mask


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def save_swin_unetr(backbone: SwinEncoder, out: Path) -> None:
    """The encoder (``swinViT.*``) and the decoder (Swin UNETR names) as float16 safetensors."""
    sd = {f"swinViT.{k}": v for k, v in backbone.swinViT.state_dict().items()}
    sd.update(backbone.decoder.state_dict())
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
          for k, v in sd.items()}
    atomic_write(out, lambda tmp: save_file(sd, str(tmp)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="tissue_inpaint")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--n-volumes", type=int, default=1024, help="pool size (half healthy)")
    ap.add_argument("--mask-prob", type=float, default=0.5)
    ap.add_argument("--mask-ratio", type=float, default=0.4)
    ap.add_argument("--mask-patch", type=int, default=8)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop after this much wall time in this process (0: no limit); "
                         "run the same command again to continue")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop at this step, save the state and write the weights so far to "
                         "--out (no card): a recipe's early checkpoint for the probes")
    ap.add_argument("--out", default=str(ASSETS / "swin_brain_fm.safetensors"))
    ap.add_argument("--work-dir", default=None,
                    help="resumable training state (default: <out>.work/)")
    ap.add_argument("--cache-dir", default=os.environ.get(
        "CLBENCH_CACHE", str(Path.home() / ".cache" / "cl_bench")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe", action="store_true",
                    help="at the end, probe the frozen model and a random one on the default "
                         "stream's validation subjects (cl_bench.representation_probes) and "
                         "put the table in the model card")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_suffix(".work")
    work.mkdir(parents=True, exist_ok=True)
    terms = RECIPES[args.recipe]

    t0 = time.time()
    pool = pretraining_pool(args.n_volumes, args.cache_dir)
    images = torch.from_numpy(pool["images"])
    tissue = torch.from_numpy(pool["tissue"].astype(np.int64))
    comp = composition(pool["tissue"])
    comp = torch.from_numpy((comp - comp.mean(0)) / comp.std(0))
    pool_seconds = time.time() - t0

    torch.manual_seed(args.seed)
    model = PretrainingModel()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    state_path = work / "state.pt"
    step, curve, seconds = 0, [], 0.0
    window: list[list[float]] = []
    resumed_at: list[int] = []  # the steps this run was continued from (after a stop or kill)
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["args"]["recipe"] != args.recipe or state["args"]["steps"] != args.steps:
            sys.exit(f"{state_path}: a run of another recipe or length; remove it or use "
                     "another --work-dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, curve, seconds = state["step"], state["curve"], state["seconds"]
        window = state.get("window", [])  # the loss curve's partial window (older states: none)
        resumed_at = state.get("resumed_at", []) + [step]
        print(f"resuming at step {step} from {state_path}")

    def save_state() -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                 "step": step, "curve": curve, "window": window, "resumed_at": resumed_at,
                 "seconds": seconds + time.time() - start, "args": vars(args)}
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    start = time.time()
    bar = tqdm(total=args.steps, initial=step, desc=f"pretraining ({args.recipe})",
               mininterval=30)
    model.train()
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        x, y = images[idx], tissue[idx].unsqueeze(1)
        masked, mask = mask_volumes(x, gen, args.mask_prob if "inpaint" in terms else 0.0,
                                    args.mask_ratio, args.mask_patch)
        seg, rec, vol = model(masked)
        losses = {}
        if "tissue" in terms:
            losses["tissue"] = dice_ce(seg, y)
        if "inpaint" in terms:
            losses["inpaint"] = ((rec - x).abs() * mask).sum() / mask.sum().clamp_min(1)
        if "volumes" in terms:
            losses["volumes"] = nn.functional.mse_loss(vol, comp[idx])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.update()
        window.append([loss.item()] + [losses[k].item() for k in terms])
        if len(window) == 50:
            m = np.mean(window, axis=0)
            curve.append({"step": step, "loss": round(float(m[0]), 4),
                          **{k: round(float(v), 4) for k, v in zip(terms, m[1:])}})
            bar.set_postfix({k: f"{v:.3f}" for k, v in curve[-1].items() if k != "step"})
            window.clear()
        if step % args.save_every == 0 or step == args.steps:
            save_state()
        if args.stop_at and step >= args.stop_at and step < args.steps:
            save_state()
            save_swin_unetr(model.backbone, out)
            print(f"stopped at step {step} (--stop-at): weights so far in {out}")
            return
        if args.max_minutes and time.time() - start > 60 * args.max_minutes and step < args.steps:
            save_state()
            print(f"stopped at step {step}: --max-minutes {args.max_minutes} reached; run the "
                  f"same command to continue")
            return
    bar.close()
    seconds += time.time() - start

    model.eval()
    save_swin_unetr(model.backbone, out)
    SwinEncoder(**SWIN, decoder=True, decoder_feature_size=DECODER_WIDTH,
                weights=str(out))  # loads strictly, or raises
    repo = Path(__file__).resolve().parent.parent
    shown = out.resolve().relative_to(repo) if out.resolve().is_relative_to(repo) else out
    meta = {"script": "scripts/pretrain_swin.py",
            "command": "python scripts/pretrain_swin.py " + " ".join(sys.argv[1:]),
            "args": {**vars(args), "out": str(shown), "work_dir": None, "cache_dir": None},
            "steps_done": step, "resumed_at_steps": resumed_at, "recipe": args.recipe,
            "terms": list(terms),
            "architecture": {**{k: list(v) if isinstance(v, tuple) else v
                                for k, v in SWIN.items()},
                             "decoder_feature_size": DECODER_WIDTH, "normalize": False},
            "method": "whole Swin UNETR (encoder + decoder): " + ", ".join(terms)
                      + "; see the script's docstring",
            "pool": {"function": "cl_bench.data.brain_synth.pretraining_pool",
                     "volumes": len(images), "healthy": int(pool["healthy"].sum()),
                     "tumour_bearing": int((~pool["healthy"]).sum()),
                     "seeds": f"numpy default_rng([{POOL_SEED}, kind, {POOL_SPLIT}, i]): split "
                              f"{POOL_SPLIT} is used by no stream (0 train, 1 test), so no "
                              "pool subject is a downstream subject",
                     "labels": "tissue (GM/WM/CSF argmax) only; no tumour labels, no ages"},
            "loss_curve": curve, "train_seconds": round(seconds, 1),
            "pool_seconds": round(pool_seconds, 1), "threads": args.threads,
            "cpu": _cpu(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "monai": __import__("monai").__version__,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "bytes": out.stat().st_size}
    card = out.with_suffix(".json")
    write_text(card, json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_curve"}, indent=2))
    if args.probe:
        probe_into_card(out, card)


def _cpu() -> str:
    """The CPU's model name (/proc/cpuinfo), for the card."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def probe_into_card(weights: Path, card: Path) -> None:
    """Probe ``weights`` against a random Swin UNETR of the same shape on the default stream's
    validation subjects (``clbench-probe``'s table) and store the table in ``card``."""
    from cl_bench.probe_cli import compose_config
    from cl_bench.representation_probes import probe_table

    cfg = compose_config([f"backbone.weights={weights}"])
    table = probe_table(cfg)
    print(table.to_string(index=False))
    meta = json.loads(card.read_text())
    meta["probes"] = json.loads(table.to_json(orient="records"))
    write_text(card, json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
