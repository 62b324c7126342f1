#!/usr/bin/env bash
# Copy the small result files of every run under a sweep directory (not its checkpoints) into a
# folder that can be committed and read by clbench-report, e.g.
#   bash scripts/collect_runs.sh results/brain_mri_fm/sweep_issue24_layer results/reference/brain_mri_fm/runs
set -euo pipefail
src=$1 dst=$2
for metrics in "$src"/*/metrics.json; do
  run=$(dirname "$metrics"); name=$(basename "$run"); out="$dst/$name"
  mkdir -p "$out/.hydra"
  for f in metrics.json matrix.csv matrix_val.csv params.json probes.json probes_movement.csv \
           probes_reliance.csv timing.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$out/"
  done
  cp "$run/.hydra/config.yaml" "$out/.hydra/"
  [ -f "$src/logs/$name.log" ] && cp "$src/logs/$name.log" "$out/run.log"
done
echo "collected $(ls "$dst" | wc -l) runs into $dst"
