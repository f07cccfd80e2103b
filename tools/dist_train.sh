#!/usr/bin/env bash
# Train on several GPUs (or CPU processes) of one node, or of several nodes, with torchrun:
#   tools/dist_train.sh CONFIG NUM_PROCESSES_PER_NODE [tools/train.py options]
# Several nodes: run it on each node with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and
# PORT set alike. Without CUDA the processes use gloo on the CPU (tools/config_utils.py).
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
