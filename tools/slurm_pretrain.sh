#!/usr/bin/env bash
# ImageNet pretraining on a Slurm cluster, as mmpretrain's tools/slurm_train.sh:
#   [GPUS=16 GPUS_PER_NODE=8] tools/slurm_pretrain.sh PARTITION JOB_NAME CONFIG WORK_DIR \
#       [pretrain.py options]
exec "$(dirname "$0")/_slurm_launch.sh" "$1" "$2" pretrain.py "$3" --work-dir="$4" "${@:5}"
