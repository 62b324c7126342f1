#!/usr/bin/env bash
# Reproduce the CISS table on seg_mnist (the STAR comparison, Chen et al. NeurIPS 2023 / TPAMI
# 2025): 6-1 overlapped and 6-2 disjoint, seq_ft / lwf / star / star_lite / joint, 3 seeds, then
# one report per setting and the base/new/all table (ciss.csv of every run).
#
#   bash scripts/reproduce_ciss.sh                      # local, sequential (~2 h on one core)
#   bash scripts/reproduce_ciss.sh hardware=slurm       # as SLURM job arrays
#   STRATEGIES=seq_ft,star SEEDS=0 bash scripts/reproduce_ciss.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$( [ -x .venv/bin/clbench ] && echo .venv/bin || dirname "$(command -v clbench)")}
SWEEP=${SWEEP:-results/ciss/sweep_$(date +%Y-%m-%d_%H-%M-%S)}
STRATEGIES=${STRATEGIES:-seq_ft,lwf,star,star_lite,joint}
SEEDS=${SEEDS:-0,1,2}
run() { "$BIN/clbench" -m experiment=ciss_seg_mnist train.progress_bar=false logger=none \
        "strategy=$STRATEGIES" "seed=$SEEDS" "$@"; }
run tasks=seg_mnist_6-1 tasks.setting=overlapped "hydra.sweep.dir=$SWEEP/6-1_overlapped" "${@}"
run tasks=seg_mnist_6-2 tasks.setting=disjoint "hydra.sweep.dir=$SWEEP/6-2_disjoint" "${@}"
for s in 6-1_overlapped 6-2_disjoint; do
  "$BIN/clbench-report" "$SWEEP/$s" --out "$SWEEP/$s/report" --format markdown
done
"$BIN/python" - "$SWEEP" <<'PY'
import glob, json, sys
import pandas as pd
rows = []
for path in glob.glob(f"{sys.argv[1]}/*/*/metrics.json"):
    m = json.load(open(path))
    if m.get("complete") and "ciss" in m:
        last = m["ciss"]["last"]
        rows.append({"protocol": path.split("/")[-3], "strategy": m["strategy"], "seed": m["seed"],
                     **{k: last[k] for k in ("miou_base", "miou_new", "miou_all")}})
df = pd.DataFrame(rows)
agg = df.groupby(["protocol", "strategy"])[["miou_base", "miou_new", "miou_all"]].agg(["mean", "std"])
table = agg.apply(lambda r: pd.Series({k: f"{r[(k, 'mean')]:.3f} ± {r[(k, 'std')]:.3f}"
                                       for k in ("miou_base", "miou_new", "miou_all")}), axis=1)
out = f"{sys.argv[1]}/ciss_table.md"
open(out, "w").write(table.to_markdown() + "\n")
print(table.to_markdown())
print("written:", out)
PY
