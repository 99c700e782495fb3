#!/usr/bin/env bash
# An example sweep: learning rate x seed over one recipe, one `embed-jax train` per run.
#
#   bash configs/sweeps/learning_rate.sh           # run them here, one after another
#   bash configs/sweeps/learning_rate.sh --print   # print one command per line instead: hand the
#                                                  # lines to a cluster scheduler, a job each
#   embed-jax compare 'runs/sweep_lr/*' --plot code_search_mrr@10 --by learning_rate
#
# Every run records its operative config (config.gin) and results (results.json), so
# `embed-jax compare` tells them apart. Re-running a line resumes that run.
# Settings: GIN_FILE (default runs/tiny_synthetic.gin, seconds per run; e.g. runs/quickstart.gin),
# OUT (default runs/sweep_lr), STEPS (default 20).
set -euo pipefail

GIN_FILE=${GIN_FILE:-runs/tiny_synthetic.gin}
OUT=${OUT:-runs/sweep_lr}
STEPS=${STEPS:-20}
EMBED_JAX=${EMBED_JAX:-embed-jax}

for lr in 1e-4 1e-3 1e-2; do
  for seed in 0 1; do
    command=("$EMBED_JAX" train --gin_file="$GIN_FILE" --model_dir="$OUT/lr${lr}_seed${seed}"
             --gin.learning_rate_schedule.learning_rate="$lr"
             --gin.learning_rate_schedule.warmup_steps=2
             --gin.train.seed="$seed" --gin.train.steps="$STEPS")
    if [[ "${1:-}" == "--print" ]]; then
      printf '%q ' "${command[@]}"
      echo
    else
      "${command[@]}"
    fi
  done
done
