"""Choose the age head's weight decay and early stopping on validation subjects.

The age head of the default protocol (``backbone.regression_norm=train``): the global average of
what it reads (``backbone.regression_stages``; the shared decoder's features), standardised by
the training subjects' statistics (frozen at task start), one linear layer. On a frozen backbone
(seq_lp, and lora's first step) it is a linear model on fixed features, so it is trained here as
the runner trains it, on features computed once: AdamW at ``strategy.head_lr`` with weight decay
``wd``, batch ``train.batch_size``, ``train.max_steps`` steps over the shuffled training
subjects, the mean squared error on the normalised age (``kinds``' regression loss); with early
stopping, the validation loss is checked every ``train.val_every_n_steps`` steps and training
stops after ``patience`` checks without a lower one (Lightning's ``EarlyStopping``, which keeps
the last weights). Scored by the validation MAE in years (``tasks.n_val_by_task``: 32 subjects),
over seeds (the run's seed sets the validation split, the head's initialisation and the batch
order). Test subjects are never read.

    python scripts/probes/age_head_choice.py --seeds 0 1 2 --out age_head_choice.csv

The choice (smallest mean validation MAE; ties within one standard error go to the simpler
setting, less decay and no early stopping) is written to the config by hand, citing this file.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pandas as pd
import torch


def pooled_features(model, dataset, batch_size: int = 4) -> torch.Tensor:
    """``(N, D)`` global averages of what the age head reads (``backbone.regression_stages``:
    the decoder's features by default) from a frozen backbone."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(dataset), batch_size):
            x = torch.stack([dataset[j]["image"] for j in range(i, min(i + batch_size,
                                                                        len(dataset)))])
            _, stages = model.features(x, ["brain_age"])
            out.append(model.heads["brain_age"].pooled([s.float() for s in stages]))
    return torch.cat(out)


def train_head(train_x, train_y, val_x, val_y, *, wd: float, patience: int, seed: int,
               lr: float, steps: int, batch: int, every: int) -> tuple[float, int]:
    """The head on standardised features; returns (validation MAE in normalised units, steps)."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], 1)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    best, bad, step = float("inf"), 0, 0
    order = torch.randperm(len(train_x), generator=gen)
    pos = 0
    while step < steps:
        if pos + batch > len(order):
            order, pos = torch.randperm(len(train_x), generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = torch.nn.functional.mse_loss(head(train_x[idx]).squeeze(-1), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if patience and step % every == 0:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(head(val_x).squeeze(-1), val_y).item()
            if val < best:
                best, bad = val, 0
            else:
                bad += 1
                if bad >= patience:
                    break
    with torch.no_grad():
        return float((head(val_x).squeeze(-1) - val_y).abs().mean()), step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0])
    ap.add_argument("--patiences", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*", help="clbench overrides (e.g. backbone.weights=...)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cl_bench.config import build, build_stream
    from cl_bench.probe_cli import compose_config

    rows = []
    for seed in args.seeds:
        cfg = compose_config([f"seed={seed}", *args.overrides])
        stream = build_stream(cfg)
        task = next(t for t in stream if t.name == "brain_age")
        torch.manual_seed(seed)
        model = build(cfg.backbone, "backbone")
        model.add_heads(stream)
        model.eval()
        tx, vx = pooled_features(model, task.train), pooled_features(model, task.val)
        mean, std = tx.mean(0), tx.var(0, unbiased=False).add(1e-5).sqrt()  # "train" norm
        tx, vx = (tx - mean) / std, (vx - mean) / std
        ty = torch.tensor([float(task.train[i]["label"]) for i in range(len(task.train))])
        vy = torch.tensor([float(task.val[i]["label"]) for i in range(len(task.val))])
        m, s = task.target_mean, task.target_std
        mean_mae = float((vy - m).abs().mean())
        for wd, patience in itertools.product(args.weight_decays, args.patiences):
            mae, steps = train_head(tx, (ty - m) / s, vx, (vy - m) / s, wd=wd,
                                    patience=patience, seed=seed,
                                    lr=float(cfg.strategy.head_lr),
                                    steps=int(cfg.train.max_steps),
                                    batch=int(cfg.train.batch_size),
                                    # 50: train.val_every_n_steps when this ran
                                    every=int(cfg.train.val_every_n_steps) or 50)
            rows.append({"seed": seed, "weight_decay": wd, "patience": patience,
                         "val_mae_years": mae * s, "steps": steps,
                         "mean_predictor_years": mean_mae})
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    summary = table.groupby(["weight_decay", "patience"]).agg(
        mae=("val_mae_years", "mean"), sd=("val_mae_years", "std"), steps=("steps", "mean"),
        mean_predictor=("mean_predictor_years", "mean")).reset_index()
    summary["se"] = summary["sd"] / np.sqrt(len(args.seeds))
    print(summary.round(3).to_string(index=False))
    best = summary.loc[summary["mae"].idxmin()]
    near = summary[summary["mae"] <= best["mae"] + best["se"]]
    chosen = near.sort_values(["weight_decay", "patience"]).iloc[0]
    print(f"chosen: weight_decay={chosen['weight_decay']}, patience={int(chosen['patience'])} "
          f"(validation MAE {chosen['mae']:.2f} y; best {best['mae']:.2f} ± {best['se']:.2f})")


if __name__ == "__main__":
    main()
