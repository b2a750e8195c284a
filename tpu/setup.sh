#!/usr/bin/env bash
# Copies this checkout to every host of a slice and builds its environment there, once per
# lock hash (a relaunch on the same hosts reuses it). Usage: tpu/setup.sh NAME ZONE [--dry-run]
source "$(dirname "$0")/lib.sh"
pos=()
for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --*) die "unknown flag $a" ;;
    *) pos+=("$a") ;;
  esac
done
[ "${#pos[@]}" = 2 ] || die "usage: $0 NAME ZONE [--dry-run]"
name=${pos[0]} zone=${pos[1]}
hash=$(lock_hash)
tarball="${TMPDIR:-/tmp}/phenaki_jax-$hash.tgz"
run tar -C "$HERE" --exclude=.venv --exclude=runs --exclude=.git -czf "$tarball" .
run gcloud compute tpus tpu-vm scp "$tarball" "$name:phenaki_jax.tgz" --zone="$zone" --worker=all
ssh_all "$name" "$zone" "set -e; mkdir -p ~/phenaki_jax; tar -C ~/phenaki_jax -xzf ~/phenaki_jax.tgz; \
if [ ! -x ~/venvs/$hash/bin/python ]; then python3 -m venv ~/venvs/$hash.tmp \
&& ~/venvs/$hash.tmp/bin/pip install -q -c ~/phenaki_jax/requirements.lock -e ~/phenaki_jax \
&& mv ~/venvs/$hash.tmp ~/venvs/$hash; fi; ln -sfn ~/venvs/$hash ~/phenaki_jax/.venv"
