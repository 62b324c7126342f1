"""Choose the foundation model's pretraining recipe by probes on validation subjects.

Each candidate checkpoint (a whole Swin UNETR: ``scripts/pretrain_swin.py --stop-at N``) and a
randomly initialised Swin UNETR of the same shape are probed frozen on the default stream's
validation subjects with :func:`cl_bench.representation_probes.probe_model` (the table of
``clbench-probe``; the random model is probed once). Test subjects are never read.

The rule, fixed before the probes were run: the two probes the default heads read decide, the
tumour task's Dice at the shared decoder's output (``decoder``, what the 1x1x1 segmentation head
reads) and the brain-age MAE at the final stage (``stage4``, what the age head reads). A
candidate wins a probe by being better on it; the candidate winning both wins; a split is
decided by the age MAE, the probe on which the earlier checkpoint was no better than random.

    python scripts/probes/pretraining_recipe_probe.py \\
        tissue_inpaint=/work/pretrain/tissue_inpaint/swin_brain_fm.safetensors \\
        tissue_inpaint_volumes=/work/pretrain/tissue_inpaint_volumes/swin_brain_fm.safetensors \\
        --out results/reference/swin_brain_fm/recipe_probes.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

#: the probes the default heads read: (task, stage, metric, lower is better)
DECIDING = [("tumour_seg", "decoder", "dice", False), ("brain_age", "stage4", "mae", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+", help="name=path of a whole Swin UNETR checkpoint")
    ap.add_argument("--out", required=True, help="CSV of every probe row of every model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cl_bench.config import build, build_stream
    from cl_bench.probe_cli import compose_config
    from cl_bench.representation_probes import probe_model

    cfg = compose_config([f"seed={args.seed}", "backbone.weights=null"])
    stream = build_stream(cfg)
    tables = []
    for name, path in [("random", None)] + [c.split("=", 1) for c in args.candidates]:
        start = time.time()
        torch.manual_seed(args.seed)
        node = cfg.backbone.copy()
        node.weights = path
        model = build(node, "backbone")
        table = probe_model(model, stream, seed=args.seed)
        table.insert(0, "model", name)
        tables.append(table)
        print(f"{name}: probed in {time.time() - start:.0f} s")
    table = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    wide = table.pivot_table(index=["task", "stage", "metric"], columns="model", values="value",
                             sort=False)
    print(wide.round(3).to_string())
    names = [c.split("=", 1)[0] for c in args.candidates]
    wins = {n: 0 for n in names}
    for task, stage, metric, lower in DECIDING:
        values = {n: float(wide.loc[(task, stage, metric), n]) for n in names}
        best = (min if lower else max)(values, key=values.get)
        wins[best] += 1
        print(f"{task} {stage} {metric}: " + ", ".join(f"{n} {v:.3f}" for n, v in values.items())
              + f" (random {float(wide.loc[(task, stage, metric), 'random']):.3f}) -> {best}")
    age = {n: float(wide.loc[("brain_age", "stage4", "mae"), n]) for n in names}
    chosen = max(names, key=lambda n: (wins[n], -age[n]))
    print(f"chosen: {chosen} (wins {wins})")


if __name__ == "__main__":
    main()
