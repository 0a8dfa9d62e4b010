#!/usr/bin/env bash
# Distributed evaluation with torchrun, as mmdet's tools/dist_test.sh:
#   [NNODES=.. NODE_RANK=.. MASTER_ADDR=.. PORT=..] tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
exec "$(dirname "$0")/_dist_launch.sh" test.py "$3" "$1" "$2" "${@:4}"
