#!/usr/bin/env bash
# Stops training cleanly (SIGTERM: finish the step, checkpoint, exit 0), waits for it, then
# deletes the slice. Usage: tpu/stop.sh NAME ZONE [--keep] [--dry-run]
source "$(dirname "$0")/lib.sh"
pos=() keep=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --keep) keep=1 ;;
    --*) die "unknown flag $a" ;;
    *) pos+=("$a") ;;
  esac
done
[ "${#pos[@]}" = 2 ] || die "usage: $0 NAME ZONE [--keep] [--dry-run]"
name=${pos[0]} zone=${pos[1]}
ssh_all "$name" "$zone" "pkill -TERM -f phenaki-train || true; while pgrep -f phenaki-train > /dev/null; do sleep 2; done"
if [ "$keep" = 0 ]; then
  run gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet
fi
