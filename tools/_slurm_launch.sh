#!/usr/bin/env bash
# Shared by slurm_train.sh / slurm_test.sh / slurm_pretrain.sh: srun GPUS tasks of tools/TOOL with
# the slurm launcher. GPUS (total), GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS as in mmdet; PYTHON
# picks the interpreter.
set -x
PARTITION=$1
JOB_NAME=$2
TOOL=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$(dirname "$0")/$TOOL" "${@:4}" --launcher=slurm
