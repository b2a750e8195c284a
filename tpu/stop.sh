#!/usr/bin/env bash
# Stops training cleanly (SIGTERM: finish the step, checkpoint, exit 0), then deletes the slice.
# Usage: tpu/stop.sh NAME ZONE [--keep]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NAME ZONE [--keep]" >&2
  exit 2
fi
name=$1 zone=$2
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
  --command="pkill -TERM -f phenaki-train || true; while pgrep -f phenaki-train >/dev/null; do sleep 2; done"
if [ "${3:-}" != "--keep" ]; then
  gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet
fi
