#!/usr/bin/env bash
# GRPO with verl 0.9.x (V1 trainer), watched by phasewatch. Needs verl's usual GPU setup.
#
# What switches phasewatch on:
#   1. the module is imported in every verl process: VERL_USE_EXTERNAL_MODULES below, or
#      nothing at all when phasewatch is installed with its `verl.plugins` entry point;
#   2. trainer.v1.trainer_mode=phasewatch (verl's sync trainer plus phasewatch);
#   3. the `+phasewatch.*` keys: the fields of phasewatch.Config.
# Everything else is an ordinary verl GRPO command: replace the data and model paths.
set -euo pipefail

export VERL_USE_EXTERNAL_MODULES=phasewatch.hooks.verl

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_files="$HOME/data/gsm8k/train.parquet" \
    data.val_files="$HOME/data/gsm8k/test.parquet" \
    data.train_batch_size=256 \
    data.max_prompt_length=512 \
    data.max_response_length=2048 \
    actor_rollout_ref.model.path=Qwen/Qwen3-4B-Base \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=8 \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.total_training_steps=300 \
    trainer.save_freq=50 \
    trainer.logger='["console","wandb"]' \
    trainer.v1.trainer_mode=phasewatch \
    +phasewatch.run=qwen3-4b-gsm8k \
    +phasewatch.reweight=auto \
    +phasewatch.alpha=0.2 \
    +phasewatch.ramp_steps=10 \
    +phasewatch.metrics_port=9811 \
    "$@"
