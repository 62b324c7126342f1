#!/usr/bin/env bash
# Reproduce the brain-MRI foundation-model table (arXiv 2602.23533) on the embedded stream:
# seq_ft / seq_lp / lora on the pretrained Swin UNETR (swin_brain_fm: encoder + decoder shared,
# LoRA in both, a small head per task), the from-scratch reference (strategy=scratch: a fresh
# MONAI BasicUNet / its encoder per task), 3 seeds, then the model-free data checks and one
# report beside the paper's numbers and the paper's claims judged on ours (claims.md). Then the
# ablation rows, each strategy x seed once more with:
#   unetr_decoder   the earlier protocol's segmentation head: a Swin UNETR decoder per task
#                   (5.3 M parameters) trained in full from scratch, on the same encoder; with
#                   no shared decoder the age head reads the encoder's final stage
#   ssl_checkpoint  the earlier encoder-only SSL checkpoint (swin_brain_ssl) with that decoder
#   shallow_age     the earlier age head (ReLU-averaged stages 0-1) instead of the decoder's
#   image_skip      Swin UNETR's raw-image encoder1 in a per-task tumour decoder
#   linear_decoder  a linear segmentation probe of the five encoder stages (3 k parameters)
#
#   bash scripts/reproduce_brain_mri.sh                      # one run at a time
#   PARALLEL=2 bash scripts/reproduce_brain_mri.sh           # two at a time, one thread each
#   PARALLEL=12 bash scripts/reproduce_brain_mri.sh hardware=slurm          # every run a SLURM job
#   OUT=results/reference/brain_mri_fm bash scripts/reproduce_brain_mri.sh  # where the report goes
#   STRATEGIES="lora" SEEDS="0" bash scripts/reproduce_brain_mri.sh         # a subset
#   ABLATIONS="" bash scripts/reproduce_brain_mri.sh          # the main rows only
#   ABLATION_STRATEGIES="lora" ABLATION_SEEDS="0" ...         # fewer ablation runs
#   SWEEP=results/brain_mri_fm/sweep_X bash scripts/reproduce_brain_mri.sh  # continue a cut sweep:
#       finished runs are kept, a run cut short continues from its checkpoint (clbench resume=)
#
# The table is made with the defaults' numerics (hardware.precision=auto: bf16 autocast for the
# encoder on a CPU with native bf16, the decoder in fp32; fused attention). The tables before
# issue 37 (results/reference/brain_mri_fm/before_*) were made in fp32 with MONAI's explicit
# window attention: NUMERICS="hardware.precision=32-true backbone.fused_attention=false".
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
ABLATIONS=${ABLATIONS-unetr_decoder ssl_checkpoint}
ABLATION_STRATEGIES=${ABLATION_STRATEGIES:-lora seq_ft seq_lp}
ABLATION_SEEDS=${ABLATION_SEEDS:-$SEEDS}
PARALLEL=${PARALLEL:-1}
NUMERICS=${NUMERICS-}
THREADS=${THREADS:-$([ "$PARALLEL" -gt 1 ] && echo 1 || echo 2)}
EXTRA="$NUMERICS $*"
export BIN SWEEP EXTRA THREADS
jobs() {
  # seed-major: every strategy of seed 0 first, so a partial sweep is a complete table row set
  for seed in $SEEDS; do for s in $STRATEGIES; do echo "$s $seed default"; done; done
  for a in $ABLATIONS; do for seed in $ABLATION_SEEDS; do for s in $ABLATION_STRATEGIES; do
    echo "$s $seed $a"; done; done; done
}
one() {  # strategy seed ablation
  local name="$1_seed$2" over=""
  case "$3" in
    default) ;;
    unetr_decoder) over="backbone.decoder=unetr" ;;
    ssl_checkpoint) over="backbone.weights=swin_brain_ssl backbone.decoder=unetr" ;;
    shallow_age) over="backbone.regression_stages=[0,1] backbone.regression_rectify=true" ;;
    image_skip) over="backbone.decoder=unetr backbone.decoder_image_skip=true" ;;
    linear_decoder) over="backbone.decoder=linear" ;;
    *) echo "unknown ablation $3"; return 1 ;;
  esac
  [ "$3" = default ] || name="$3_$name"
  local dir="$SWEEP/$name"
  if [ -f "$dir/metrics.json" ] && "$BIN/python" -c \
      'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("complete") else 1)' \
      "$dir/metrics.json"; then
    echo "done: $name"; return 0
  fi
  if [ -f "$dir/checkpoints/config.yaml" ]; then  # cut short (a session's end, a kill): continue
    echo "resume: $name"
    "$BIN/clbench" "resume=$dir" train.progress_bar=false "hardware.num_threads=$THREADS" \
      >> "$SWEEP/logs/$name.log" 2>&1 || { echo "FAILED: see $SWEEP/logs/$name.log"; return 1; }
    return 0
  fi
  echo "run: $name"
  "$BIN/clbench" -m experiment=brain_mri_fm train.progress_bar=false logger=none \
    "strategy=$1" "seed=$2" "hardware.num_threads=$THREADS" "hydra.sweep.dir=$SWEEP" \
    "hydra.sweep.subdir=$name" $over $EXTRA > "$SWEEP/logs/$name.log" 2>&1 \
    || { echo "FAILED: see $SWEEP/logs/$name.log"; return 1; }
}
export -f one
mkdir -p "$SWEEP/logs" "$OUT"
jobs | xargs -P "$PARALLEL" -L 1 bash -c 'one "$@"' one
"$BIN/python" scripts/brain_data_checks.py --json "$OUT/data_checks.json" > /dev/null
"$BIN/clbench-report" "$SWEEP" --paper brain_mri_fm --out "$OUT" --format markdown
echo "table: $OUT/report.md  figures: $OUT/heatmaps.png $OUT/curves.png  checks: $OUT/data_checks.json"
