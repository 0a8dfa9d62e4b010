#!/usr/bin/env bash
# Evaluation on a Slurm cluster, as mmdet's tools/slurm_test.sh:
#   [GPUS=8] tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]
exec "$(dirname "$0")/_slurm_launch.sh" "$1" "$2" test.py "$3" "$4" "${@:5}"
