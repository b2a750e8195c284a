#!/usr/bin/env bash
# Starts the same command on every host of a slice, after ending whatever still holds the
# TPU; each host logs to ~/train.log and to WORKDIR/logs/worker-HOST.log (on gs://: copied
# there every minute and when the run ends).
# Usage: tpu/launch.sh NAME ZONE [--dry-run] -- phenaki-train --multihost --workdir=DIR ...
source "$(dirname "$0")/lib.sh"
pos=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --*) die "unknown flag $1" ;;
    *) pos+=("$1") ;;
  esac
  shift
done
[ "${#pos[@]}" = 2 ] && [ "${1:-}" = "--" ] && [ $# -ge 2 ] \
  || die "usage: $0 NAME ZONE [--dry-run] -- COMMAND..."
shift
name=${pos[0]} zone=${pos[1]}
workdir=""
for a in "$@"; do
  case "$a" in --workdir=*) workdir=${a#--workdir=} ;; esac
done
[ -n "$workdir" ] || die "the command needs --workdir=DIR (every host writes its log there)"
cmd=$(printf '%q ' "$@")
log="$workdir/logs/worker-\$(hostname).log"
if [[ $workdir == gs://* ]]; then
  # A GCS object cannot be appended to: the log is copied up every minute and at the end.
  up="gcloud storage cp ~/train.log $log > /dev/null 2>&1"
  run=".venv/bin/${cmd% } > ~/train.log 2>&1 & p=\$!; \
while kill -0 \$p 2>/dev/null; do sleep 60; $up; done; $up"
else
  run="mkdir -p $workdir/logs && .venv/bin/${cmd% } 2>&1 | tee ~/train.log > $log"
fi
ssh_all "$name" "$zone" "sudo pkill -9 -f phenaki-train || true; \
sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | xargs -r sudo kill -9; \
cd ~/phenaki_jax; nohup bash -c '$run' > /dev/null 2>&1 &"
