#!/usr/bin/env bash
# GRPO in verl on a semrl run's splits with semrl's rewards (semrl_grpo.yaml beside this script).
#
#   examples/verl/run_grpo.sh RUN_DIR MODEL_DIR [hydra overrides, e.g. trainer.n_gpus_per_node=4]
#
# RUN_DIR: a semrl run directory with splits (`semrl data prepare CONFIG --out RUN_DIR`);
# MODEL_DIR: the policy to start from, e.g. `semrl export RUN_DIR --stage cold_start --out MODEL_DIR`.
# The splits are exported once to $SEMRL_VERL_DATA (default: RUN_DIR-verl). Needs verl with its GPU
# stack (vLLM, FSDP) and semrl importable on every node. Not run by semrl's CI (no GPU there).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 RUN_DIR MODEL_DIR [hydra overrides...]" >&2
  exit 2
fi
RUN_DIR=${1%/}
MODEL_DIR=$2
shift 2
DATA=${SEMRL_VERL_DATA:-$RUN_DIR-verl}
if [ ! -f "$DATA/semrl_export.json" ]; then
  semrl data export "$RUN_DIR" --format verl --out "$DATA"
fi
python3 -m verl.trainer.main_ppo \
  --config-path="$(cd "$(dirname "$0")" && pwd)" --config-name=semrl_grpo \
  data.train_files="$DATA/rl.parquet" \
  data.val_files="$DATA/dev.parquet" \
  actor_rollout_ref.model.path="$MODEL_DIR" \
  reward.reward_kwargs.semrl_config="$DATA/semrl.yaml" \
  "$@"
