#!/usr/bin/env bash
# Shared by dist_train.sh / dist_test.sh / dist_pretrain.sh: torchrun NPROC copies of tools/TOOL
# with the pytorch launcher. NNODES, NODE_RANK, MASTER_ADDR, PORT as in mmdet; PYTHON picks the
# interpreter.
# Without a GPU the processes run on CPU over gloo (see mmdet_eps/utils/compat.py).
TOOL=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$(dirname "$0")/$TOOL" \
    "${@:3}" \
    --launcher pytorch
