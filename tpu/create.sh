#!/usr/bin/env bash
# Creates a TPU VM slice. Usage: tpu/create.sh NAME ZONE ACCELERATOR [--spot]
#   e.g. tpu/create.sh phenaki-v4-32 us-central2-b v4-32 --spot
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NAME ZONE ACCELERATOR_TYPE [--spot]" >&2
  exit 2
fi
name=$1 zone=$2 accel=$3
shift 3
gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accel" \
  --version="${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}" "$@"
