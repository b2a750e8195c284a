#!/usr/bin/env bash
# The last lines of a worker's log. Usage: tpu/logs.sh NAME ZONE [--worker=N|all] [--lines=N] [--dry-run]
source "$(dirname "$0")/lib.sh"
pos=() worker=0 lines=100
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --worker=*) worker=${a#--worker=} ;;
    --lines=*) lines=${a#--lines=} ;;
    --*) die "unknown flag $a" ;;
    *) pos+=("$a") ;;
  esac
done
[ "${#pos[@]}" = 2 ] || die "usage: $0 NAME ZONE [--worker=N|all] [--lines=N] [--dry-run]"
run gcloud compute tpus tpu-vm ssh "${pos[0]}" --zone="${pos[1]}" --worker="$worker" \
  --command="tail -n $lines ~/train.log"
