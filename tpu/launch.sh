#!/usr/bin/env bash
# Copies this checkout to every host of a TPU VM slice, installs the pinned environment with
# TPU jaxlib, and starts the same phenaki-train command on all hosts (with --multihost, JAX
# joins the hosts from the TPU metadata; every host saves its checkpoint shards).
# Usage: tpu/launch.sh NAME ZONE -- phenaki-train --multihost \
#          --config=configs/cvivit.py:variant=paper \
#          --workdir=/mnt/shared/runs/tok [--config.mesh.model=8 ...]
set -euo pipefail
if [ $# -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: $0 NAME ZONE -- COMMAND..." >&2
  exit 2
fi
name=$1 zone=$2
shift 3
cmd=$(printf '%q ' "$@")
here=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$here" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/phenaki_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/phenaki_jax.tgz "$name":~/ --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  mkdir -p ~/phenaki_jax && tar -C ~/phenaki_jax -xzf ~/phenaki_jax.tgz && cd ~/phenaki_jax
  python3 -m venv .venv && .venv/bin/pip install -q -c requirements.lock -e . \
    && .venv/bin/pip install -q 'jax[tpu]==0.10.2'
  # nohup + log per host: a dropped ssh session does not stop training; SIGTERM from a
  # preemption reaches the process, which checkpoints and exits 0 (see README, Reliability).
  nohup .venv/bin/$cmd > ~/train.log 2>&1 &
"
echo "launched on all hosts of $name; logs: gcloud compute tpus tpu-vm ssh $name --zone=$zone --worker=0 --command='tail -f ~/train.log'"
