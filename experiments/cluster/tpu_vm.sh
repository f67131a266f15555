#!/usr/bin/env bash
# One training run on a Cloud TPU VM (a single host or a multi-host pod slice).
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a experiments/cluster/tpu_vm.sh \
#       --config=experiments/configs/default.py --workdir=gs-fuse/runs/census
#
# The same command runs on every worker (--worker=all); --distributed=on makes each process call
# jax.distributed.initialize() with no arguments, and JAX finds the pod's other hosts from the
# TPU metadata. The repository and its .venv must already exist at $REMOTE_REPO on every
# worker (e.g. `--worker=all --command="git clone ... && python3 -m venv .venv && ..."`, with
# `jax[tpu]` installed instead of the CPU jaxlib). The workdir must be shared by the hosts.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REMOTE_REPO="${REMOTE_REPO:-mtl_jax}"
GCLOUD="${GCLOUD:-gcloud}"

args=""
for a in "$@"; do
  args+=" $(printf '%q' "$a")"
done

exec "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd $(printf '%q' "$REMOTE_REPO") && .venv/bin/python launch.py --distributed=on$args"
