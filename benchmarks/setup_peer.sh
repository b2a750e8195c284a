#!/usr/bin/env bash
# Recreate the PyTorch peer's venv (phenaki-pytorch 0.5.0 on CPU torch 2.13.0) from scratch.
#
# The peer lives in its own venv, outside the repo, and is never a dependency of phenaki_jax.
# Idempotent: exits at once when the venv already imports phenaki_pytorch 0.5.0.
#
#   bash benchmarks/setup_peer.sh            # venv at /work/peer-venv
#   PEER_VENV=/some/dir bash benchmarks/setup_peer.sh
#
# torch==2.13.0 must resolve to the CPU wheel (torch-2.13.0+cpu, found through pip's
# configured find-links on this machine); the script refuses a CUDA torch. Every later
# install runs with a constraints file so nothing can replace that torch.
#
# Known fix (applied at run time by benchmarks/peer_pytorch.py, not here): the only
# torchvision for torch 2.13.0 on PyPI (0.28.0) is a CUDA build whose C extension cannot load
# next to CPU torch, so a plain `import torchvision` (hence `import phenaki_pytorch`) fails
# with "operator torchvision::nms does not exist". No older torchvision fits torch 2.13.0
# (each pins its torch exactly); peer_pytorch.py declares the two missing op schemas and
# retries. Use `peer_pytorch.py --check` to import the peer.
#
# Worked on 2 CPU cores with Python 3.11.7, resolving (pip freeze, model-relevant part):
#   torch==2.13.0+cpu torchvision==0.28.0 phenaki-pytorch==0.5.0
#   vector-quantize-pytorch==1.32.0 einops==0.8.2 beartype==0.23.1 transformers==5.24.0
set -euo pipefail

VENV="$(realpath -m "${PEER_VENV:-/work/peer-venv}")"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"

check() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" "$HERE/peer_pytorch.py" --check 2>/dev/null
}

if check; then
    echo "peer venv ready: $VENV"
    exit 0
fi

case "$VENV" in
    "$REPO" | "$REPO"/*) echo "refusing: venv $VENV is inside the repo $REPO" >&2; exit 1 ;;
esac

echo "creating peer venv from scratch: $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check)

"${PIP[@]}" torch==2.13.0
if ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then
    echo "refusing: pip installed a CUDA torch; a torch-2.13.0+cpu wheel must be reachable" >&2
    exit 1
fi

# torch pinned for every later install; the rest pins what was verified to work.
CONSTRAINTS="$VENV/constraints.txt"
cat >"$CONSTRAINTS" <<'EOF'
torch==2.13.0
torchvision==0.28.0
vector-quantize-pytorch==1.32.0
einops==0.8.2
beartype==0.23.1
EOF
"${PIP[@]}" -c "$CONSTRAINTS" phenaki-pytorch==0.5.0

if ! check; then
    echo "phenaki_pytorch still does not import from $VENV" >&2
    "$VENV/bin/python" "$HERE/peer_pytorch.py" --check
    exit 1
fi
echo "peer venv ready: $VENV"
