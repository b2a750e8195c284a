#!/usr/bin/env bash
# Requests a TPU VM slice as a queued resource, with its generation's runtime.
# Usage: tpu/create.sh NAME ZONE ACCELERATOR_TYPE [--spot|--reserved|--best-effort] [--dry-run]
source "$(dirname "$0")/lib.sh"
args=() pos=()
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --spot|--reserved|--best-effort) args+=("$a") ;;
    --*) die "unknown flag $a" ;;
    *) pos+=("$a") ;;
  esac
done
[ "${#pos[@]}" = 3 ] || die "usage: $0 NAME ZONE ACCELERATOR_TYPE [--spot|--reserved|--best-effort] [--dry-run]"
name=${pos[0]} zone=${pos[1]} accel=${pos[2]}
version=$(runtime_version "$accel")
run gcloud compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
  --accelerator-type="$accel" --runtime-version="$version" "${args[@]}"
