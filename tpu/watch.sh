#!/usr/bin/env bash
# Keeps a run going on a spot slice: while the queued resource is active and the run has not
# finished, waits; when the slice is preempted (suspended, failed or gone), deletes it,
# requests it again, sets it up and relaunches the same command, which resumes exactly from
# its last checkpoint. Exits 0 when worker 0's log says the run finished.
# Usage: tpu/watch.sh NAME ZONE ACCELERATOR_TYPE [--spot|--reserved|--best-effort]
#          [--interval=SECONDS] [--max-relaunches=N] [--dry-run] -- phenaki-train ...
source "$(dirname "$0")/lib.sh"
pos=() tier=() interval=60 max_relaunches=20
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --spot|--reserved|--best-effort) tier+=("$1") ;;
    --interval=*) interval=${1#--interval=} ;;
    --max-relaunches=*) max_relaunches=${1#--max-relaunches=} ;;
    --*) die "unknown flag $1" ;;
    *) pos+=("$1") ;;
  esac
  shift
done
[ "${#pos[@]}" = 3 ] && [ "${1:-}" = "--" ] && [ $# -ge 2 ] \
  || die "usage: $0 NAME ZONE ACCELERATOR_TYPE [--spot] [--interval=S] [--max-relaunches=N] [--dry-run] -- COMMAND..."
shift
name=${pos[0]} zone=${pos[1]} accel=${pos[2]}
runtime_version "$accel" > /dev/null
dir=$(dirname "$0")
flags=()
[ "$DRY_RUN" = 1 ] && flags+=(--dry-run)

relaunch() {
  run gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet || true
  "$dir/create.sh" "$name" "$zone" "$accel" "${tier[@]}" "${flags[@]}"
  if [ "$DRY_RUN" = 0 ]; then
    until [ "$(qr_state "$name" "$zone")" = ACTIVE ]; do sleep "$interval"; done
  fi
  "$dir/setup.sh" "$name" "$zone" "${flags[@]}"
  "$dir/launch.sh" "$name" "$zone" "${flags[@]}" -- "$@"
}

if [ "$DRY_RUN" = 1 ]; then  # the commands of one preemption and relaunch
  relaunch "$@"
  exit 0
fi
relaunches=0
while true; do
  state=$(qr_state "$name" "$zone")
  case "$state" in
    ACTIVE)
      if gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=0 \
          --command="grep -q 'finished:' ~/train.log" > /dev/null 2>&1; then
        echo "$name: the run finished"
        exit 0
      fi ;;
    SUSPENDING|SUSPENDED|FAILED|MISSING)
      relaunches=$((relaunches + 1))
      if [ "$relaunches" -gt "$max_relaunches" ]; then
        echo "$(basename "$0"): error: $name was preempted more than $max_relaunches times" >&2
        exit 1
      fi
      echo "$name is $state: relaunch $relaunches of at most $max_relaunches"
      relaunch "$@" ;;
  esac
  sleep "$interval"
done
