#!/usr/bin/env bash
# The main job's validation curves (issue 40: fewer steps / early stopping, chosen on validation):
# lora on brain_seg_age, fp32, one thread per run, a validation check every 50 steps and no
# stopping, seeds 0-2 side by side. Code at c365cd6 (git worktree add --detach /work/wt_curves
# c365cd6; generator version 2, the data of the brain_mri_fm table). Rerun to continue: a run
# directory holding checkpoints of the same config resumes (clbench resume semantics).
# Then: python scripts/choose_early_stopping.py /work/curves/lora_seed{0,1,2} --out choice.csv
set -euo pipefail
cd /work/wt_curves
for s in 0 1 2; do
  PYTHONPATH=/work/wt_curves /work/main/.venv/bin/python -m cl_bench.cli strategy=lora seed=$s \
    train.val_every_n_steps=50 hardware.precision=32-true hardware.num_threads=1 eval.probes=false \
    train.progress_bar=false hydra.run.dir=/work/curves/lora_seed$s >> /work/curves/lora_seed$s.log 2>&1 &
done
wait
