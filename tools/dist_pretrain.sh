#!/usr/bin/env bash
# Distributed ImageNet pretraining with torchrun, as mmpretrain's tools/dist_train.sh:
#   [NNODES=.. NODE_RANK=.. MASTER_ADDR=.. PORT=..] tools/dist_pretrain.sh CONFIG GPUS \
#       [pretrain.py options]
exec "$(dirname "$0")/_dist_launch.sh" pretrain.py "$2" "$1" "${@:3}"
