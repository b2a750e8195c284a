# Sourced by the tpu/ scripts: flags every script takes, dry runs, and what they share.
# With --dry-run a script prints the exact commands it would run, one per line, and runs none.
set -euo pipefail
DRY_RUN=0
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# Runs a command, or prints it (shell-quoted) under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    local quoted
    quoted=$(printf '%q ' "$@")
    printf '%s\n' "${quoted% }"
  else
    "$@"
  fi
}

# The TPU VM runtime of each generation.
runtime_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "unknown accelerator type '$1' (v4-N, v5p-N, v5litepod-N, v6e-N)" ;;
  esac
}

# A hash of what the environment is built from: a host builds one venv per hash, once.
lock_hash() { cat "$HERE/requirements.lock" "$HERE/setup.py" | sha256sum | cut -c1-12; }

# The queued resource's state (ACTIVE, SUSPENDED, FAILED, ...), or MISSING.
qr_state() {
  gcloud compute tpus queued-resources describe "$1" --zone="$2" \
    --format='value(state.state)' 2>/dev/null || echo MISSING
}

ssh_all() {  # NAME ZONE COMMAND: on every worker
  run gcloud compute tpus tpu-vm ssh "$1" --zone="$2" --worker=all --command="$3"
}
