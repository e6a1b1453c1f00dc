set -euo pipefail
cd {{ workdir | q }}

# One directory per job (per array task): it survives requeues, so a restarted job finds its checkpoints.
{% if array -%}
RUN_DIR={{ run_root | q }}/${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
{% else -%}
RUN_DIR={{ run_root | q }}/${SLURM_JOB_ID}
{% endif -%}
ATTEMPT=${SLURM_RESTART_COUNT:-0}
mkdir -p "$RUN_DIR"

# Resume from the newest of: the checkpoint saved on the requeue signal (hpc_ckpt_N.ckpt) and the
# periodic last.ckpt (a job requeued after a node failure has only the latter).
CKPT_ARGS=()
LATEST=$(ls -t "$RUN_DIR"/hpc_ckpt_*.ckpt "$RUN_DIR"/checkpoints/last.ckpt 2>/dev/null | head -n 1 || true)
if [ -n "$LATEST" ]; then CKPT_ARGS=(--ckpt_path "$LATEST"); fi
echo "attempt $ATTEMPT of job ${SLURM_JOB_ID} on $(hostname): run dir $RUN_DIR, resume from '${LATEST:-nothing}'"

srun --kill-on-bad-exit=1 {{ python | q }} -m lightning_snn fit \
  --config {{ config | q }} \
  --trainer.accelerator={{ accelerator }} \
  --trainer.devices={{ tasks_per_node }} \
  --trainer.num_nodes={{ nodes }} \
  --trainer.strategy={{ strategy }} \
{% if sync_batchnorm %}  --trainer.sync_batchnorm=true \
{% endif %}  --trainer.default_root_dir="$RUN_DIR" \
  --checkpoint.dirpath="$RUN_DIR/checkpoints" \
  --trainer.logger.init_args.save_dir="$RUN_DIR" \
  --trainer.logger.init_args.name=logs \
  --trainer.logger.init_args.version="attempt$ATTEMPT" \
{% if array %}  --seed_everything="$SLURM_ARRAY_TASK_ID" \
{% elif seed is not none %}  --seed_everything={{ seed }} \
{% endif %}  "${CKPT_ARGS[@]}"{% for a in train_args %} \
  {{ a | q }}{% endfor %}

echo "job ${SLURM_JOB_ID} finished: $RUN_DIR"
