"""Side-by-side training-step speed: phenaki_jax vs phenaki-pytorch 0.5.0, in one run.

    .venv/bin/python benchmarks/compare_peer.py [--peer_python=/work/peer-venv/bin/python]

For each matched size of the tokenizer issue it runs `phenaki-bench` (our full training step:
forward, backward, AdamW, quantizer updates) and the peer's CViViT step (recon loss only, LFQ
off, AdamW; see benchmarks/peer_pytorch.py), one after the other on the same idle machine,
and prints one JSON line per size with both step times, the speed ratio and our MFU.
`benchmarks/setup_peer.sh` creates the peer's separate virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = [
    dict(resolution=32, patch=4, width=256, layers=2, heads=4, codebook=1024, batch=8),
    dict(resolution=64, patch=8, width=512, layers=4, heads=8, codebook=8192, batch=4),
]


def ours(size: dict, steps: int) -> dict:
    name = {32: "shapes_world_videos_mix_32", 64: "shapes_world_videos_mix_64"}[size["resolution"]]
    args = [sys.executable, "-m", "phenaki_jax.bench", "--config=configs/cvivit.py:variant=tiny",
            f"--steps={steps}", f"--config.data.resolution={size['resolution']}",
            f"--config.data.name={name}", f"--config.model.patch_size={size['patch']}",
            f"--config.model.width={size['width']}",
            f"--config.model.mlp_dim={4 * size['width']}",
            f"--config.model.spatial_layers={size['layers']}",
            f"--config.model.temporal_layers={size['layers']}",
            f"--config.model.num_heads={size['heads']}",
            f"--config.model.codebook_size={size['codebook']}",
            f"--config.batch_size={size['batch']}"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer(size: dict, steps: int, python: str) -> dict:
    args = [python, os.path.join(ROOT, "benchmarks", "peer_pytorch.py"), "--model=cvivit",
            f"--resolution={size['resolution']}", f"--patch={size['patch']}",
            f"--width={size['width']}", f"--spatial_layers={size['layers']}",
            f"--temporal_layers={size['layers']}", f"--heads={size['heads']}",
            f"--codebook={size['codebook']}", f"--batch={size['batch']}", "--frames=11",
            f"--steps={steps}"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer_python", default="/work/peer-venv/bin/python")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    for size in SIZES:
        a = ours(size, args.steps)
        b = peer(size, args.steps, args.peer_python)
        print(json.dumps({"size": size, "ours_step_s": a["step_s"], "peer_step_s": b["step_s"],
                          "speedup": b["step_s"] / a["step_s"], "ours_mfu": a["mfu"],
                          "ours_params": a["params"], "peer_params": b["params"],
                          "matmul_peak_flops_per_s": a["matmul_peak_flops_per_s"],
                          "ours_flops_per_step": a["flops_per_step"]}), flush=True)


if __name__ == "__main__":
    main()
