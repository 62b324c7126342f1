#!/usr/bin/env bash
# Reproduce the brain-MRI foundation-model table (arXiv 2602.23533) on the embedded stream:
# the sweep (3 strategies x 3 seeds, ~35 min on 2 CPU cores) and its report beside the paper.
#
#   bash scripts/reproduce_brain_mri.sh                       # local, sequential
#   bash scripts/reproduce_brain_mri.sh hardware=slurm        # as a SLURM job array
#   OUT=results/reference/brain_mri_fm bash scripts/reproduce_brain_mri.sh   # where the report goes
#
# Extra arguments go to clbench (e.g. tasks=brats_ixi tasks.brats_root=... for the real data).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$( [ -x .venv/bin/clbench ] && echo .venv/bin || dirname "$(command -v clbench)")}
SWEEP=${SWEEP:-results/brain_mri_fm/sweep_$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-$SWEEP/report}
"$BIN/clbench" -m experiment=brain_mri_fm train.progress_bar=false "hydra.sweep.dir=$SWEEP" "$@"
"$BIN/clbench-report" "$SWEEP" --paper brain_mri_fm --out "$OUT" --format markdown
echo "table: $OUT/report.md  figures: $OUT/heatmaps.png $OUT/curves.png"
