#!/usr/bin/env bash
# Reproduce the brain-MRI foundation-model table (arXiv 2602.23533) on the embedded stream:
# seq_ft / seq_lp / lora on the SSL-pretrained Swin backbone, the from-scratch reference
# (strategy=scratch: a fresh MONAI BasicUNet / its encoder per task), 3 seeds, then the
# model-free data checks and one report beside the paper's numbers.
#
#   bash scripts/reproduce_brain_mri.sh                      # one run at a time
#   PARALLEL=2 bash scripts/reproduce_brain_mri.sh           # two at a time, one thread each
#   PARALLEL=12 bash scripts/reproduce_brain_mri.sh hardware=slurm          # every run a SLURM job
#   OUT=results/reference/brain_mri_fm bash scripts/reproduce_brain_mri.sh  # where the report goes
#   STRATEGIES="lora" SEEDS="0" bash scripts/reproduce_brain_mri.sh         # a subset
#
# Extra arguments go to every clbench run (e.g. tasks=brats_ixi tasks.brats_root=... for the
# real data, backbone.weights=/path/model_swinvit.pt for a released checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$( [ -x .venv/bin/clbench ] && echo .venv/bin || dirname "$(command -v clbench)")}
SWEEP=${SWEEP:-results/brain_mri_fm/sweep_$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-$SWEEP/report}
STRATEGIES=${STRATEGIES:-lora seq_ft seq_lp scratch}
SEEDS=${SEEDS:-0 1 2}
PARALLEL=${PARALLEL:-1}
THREADS=${THREADS:-$([ "$PARALLEL" -gt 1 ] && echo 1 || echo 2)}
EXTRA="$*"
export BIN SWEEP EXTRA THREADS
jobs() { for s in $STRATEGIES; do for seed in $SEEDS; do echo "$s $seed"; done; done; }
one() {  # strategy seed
  echo "run: $1 seed $2"
  "$BIN/clbench" -m experiment=brain_mri_fm train.progress_bar=false logger=none \
    "strategy=$1" "seed=$2" "hardware.num_threads=$THREADS" "hydra.sweep.dir=$SWEEP" \
    "hydra.sweep.subdir=$1_seed$2" $EXTRA > "$SWEEP/logs/$1_seed$2.log" 2>&1 \
    || { echo "FAILED: see $SWEEP/logs/$1_seed$2.log"; return 1; }
}
export -f one
mkdir -p "$SWEEP/logs" "$OUT"
jobs | xargs -P "$PARALLEL" -L 1 bash -c 'one "$@"' one
"$BIN/python" scripts/brain_data_checks.py --json "$OUT/data_checks.json" > /dev/null
"$BIN/clbench-report" "$SWEEP" --paper brain_mri_fm --out "$OUT" --format markdown
echo "table: $OUT/report.md  figures: $OUT/heatmaps.png $OUT/curves.png  checks: $OUT/data_checks.json"
