#!/usr/bin/env python
"""Probe: which pooled statistics of the frozen SSL Swin carry brain age (issue 13; issue 24).

Extracts the frozen shipped ``swin_brain_ssl`` encoder's five stages on the brain_age task of the
embedded stream and scores candidate head inputs by (a) sklearn RidgeCV on standardised features
(the best a linear probe can do) and (b) the head trained as the runner trains it (Adam, head lr,
``steps`` steps of batch 2) on the same features, with and without per-feature standardisation
by training-set statistics. Prints *validation* MAE in years (the default stream's ``tasks.n_val``
subjects carved from its training set by ``--seed``, as a run does); the mean predictor for
comparison. The test subjects are never read: an earlier version of this probe scored on them,
and the shallow-stage head it chose (stages 0-1) is no longer the default (it stays an ablation,
``backbone.regression_stages=[0,1] backbone.regression_rectify=true``). The default age head is
the field's linear probe of the final stage, chosen by definition, not by this probe.

    python scripts/probes/age_head_probe.py --seed 0
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from cl_bench.models.continual import make_swin_model


@torch.no_grad()
def stage_stats(enc, images: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for x in images:
        _, stages = enc(torch.as_tensor(x[None]).float())
        for k, s in enumerate(stages):
            f = s.flatten(2)[0]
            out.setdefault(f"mean{k}", []).append(f.mean(-1).numpy())
            out.setdefault(f"relu{k}", []).append(f.relu().mean(-1).numpy())
            out.setdefault(f"std{k}", []).append(f.std(-1).numpy())
    return {k: np.stack(v) for k, v in out.items()}


def sgd_head(xtr, ytr, xte, steps, lr, standardise, mlp, layernorm, seed=0, eps=1e-6):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xtr, xte = torch.as_tensor(xtr).float(), torch.as_tensor(xte).float()
    mu, sd = ytr.mean(), ytr.std()
    y = torch.as_tensor((ytr - mu) / sd).float()
    if standardise:
        m, s = xtr.mean(0), (xtr.var(0, unbiased=False) + eps).sqrt()
        xtr, xte = (xtr - m) / s, (xte - m) / s
    d = xtr.shape[1]
    layers = [torch.nn.LayerNorm(d)] if layernorm else []
    layers += ([torch.nn.Linear(d, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)] if mlp
               else [torch.nn.Linear(d, 1)])
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    n = len(xtr)
    for _ in range(steps):
        idx = torch.randint(0, n, (2,), generator=g)
        loss = torch.nn.functional.mse_loss(net(xtr[idx]).squeeze(-1), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ptr = net(xtr).squeeze(-1).numpy() * sd + mu
        pte = net(xte).squeeze(-1).numpy() * sd + mu
    return np.abs(ptr - ytr).mean(), pte


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (the validation split)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eps", type=float, default=1e-6, help="added to the std (standardisation)")
    ap.add_argument("--only", default=None, help="one feature set by name")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import cl_bench.config  # noqa: F401  (the schema)
    from cl_bench.config import build_stream
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=[f"seed={a.seed}"])
    _, age = build_stream(cfg)  # training subjects and the validation ones carved from them
    model = make_swin_model(weights="swin_brain_ssl").eval()
    enc = model.encoder
    cache = Path(f"/tmp/age_probe_val_{len(age.train)}_{len(age.val)}_{a.seed}.npz")
    if cache.exists():
        z = np.load(cache)
        ftr = {k[3:]: z[k] for k in z.files if k.startswith("tr_")}
        fte = {k[3:]: z[k] for k in z.files if k.startswith("te_")}
    else:
        ftr = stage_stats(enc, np.asarray(age.train.images))
        fte = stage_stats(enc, np.asarray(age.val.images))
        np.savez(cache, **{f"tr_{k}": v for k, v in ftr.items()},
                 **{f"te_{k}": v for k, v in fte.items()})
    print("stage0-1 relu feature std over subjects: min %.2g median %.2g" % tuple(
        np.percentile(np.concatenate([ftr["relu0"], ftr["relu1"]], 1).std(0), [0, 50])))
    ytr, yte = np.asarray(age.train.labels, float), np.asarray(age.val.labels, float)
    print(f"validation MAE in years; mean predictor {np.abs(yte - ytr.mean()).mean():.1f} y "
          f"({len(ytr)} training, {len(yte)} validation subjects)")
    sets = {"all mean (today)": [f"mean{k}" for k in range(5)],
            "all relu": [f"relu{k}" for k in range(5)],
            "all mean+std": [f"{s}{k}" for s in ("mean", "std") for k in range(5)],
            "stage0 mean": ["mean0"], "stage0 relu": ["relu0"], "stage0 std": ["std0"],
            "stage0-1 relu": ["relu0", "relu1"], "stage0-1 mean+std": ["mean0", "mean1", "std0", "std1"],
            "stage1 mean": ["mean1"], "stage2 mean": ["mean2"], "stage4 mean": ["mean4"]}
    for name, keys in sets.items():
        if a.only and name != a.only:
            continue
        xtr = np.concatenate([ftr[k] for k in keys], 1)
        xte = np.concatenate([fte[k] for k in keys], 1)
        sc = StandardScaler().fit(xtr)
        r = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(sc.transform(xtr), ytr)
        ridge = np.abs(r.predict(sc.transform(xte)) - yte).mean()
        row = [f"ridge {ridge:5.1f}"]
        for tag, st, mlp, ln in (("LN+MLP", False, True, True), ("std+MLP", True, True, False),
                                 ("std+lin", True, False, False)):
            trm, p = sgd_head(xtr, ytr, xte, a.steps, a.lr, st, mlp, ln, eps=a.eps)
            row.append(f"{tag} {np.abs(p - yte).mean():5.1f} (train {trm:4.1f})")
        print(f"{name:20s} d={xtr.shape[1]:4d}  " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
