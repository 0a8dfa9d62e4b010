#!/usr/bin/env bash
# Distributed training with torchrun, as mmdet's tools/dist_train.sh:
#   [NNODES=.. NODE_RANK=.. MASTER_ADDR=.. PORT=..] tools/dist_train.sh CONFIG GPUS [train.py options]
exec "$(dirname "$0")/_dist_launch.sh" train.py "$2" "$1" "${@:3}"
