"""Side-by-side training-step speed: phenaki_jax vs phenaki-pytorch 0.5.0, in one run.

    .venv/bin/python benchmarks/compare_peer.py [--stage={cvivit,maskgit,all}] [--steps=5] \
        [--peer_huge_pages] \
        [--peer_python=/work/peer-venv/bin/python]

For each matched size it runs `phenaki-bench` (our full jitted training step) and then the
peer's step (see benchmarks/peer_pytorch.py), one after the other on the same idle machine,
each in its own process (ours re-executes itself with glibc's heap on huge pages, as every
phenaki_jax command does; the peer runs as installed, and with `--peer_huge_pages` also with
them), and prints one JSON line per size with both step times, the speed
ratio (peer_s / ours_s), our MFU, our FLOPs per step and the float32 matmul peak measured in
our process. `benchmarks/setup_peer.sh` creates the peer's separate virtual environment.

The first line printed is the machine (CPU model, cores, the instruction sets XLA's kernels
use, and the float32 matmul rate measured then): speeds hold for the machine they name.

cvivit (tokenizer): the same model on both sides: every encoder and decoder layer attends
globally over its axis (ours with `model.encoder_window=-1`, the paper's and the peer's
encoder; the tiny variant's default 0 attends to each token itself only, a cheaper model), causal
in time; videos only, no EMA of the weights. Our step = forward, backward, AdamW, and the
quantizer's commitment loss and code-usage statistics; the peer's CViViT step =
reconstruction loss only (its VQ commitment loss is dropped), LFQ off, AdamW. What still
differs: positions (ours learned embeddings; the peer's an MLP position bias over all spatial
token pairs, ALiBi in time and a depthwise-conv PEG per temporal block), the feed-forward
(ours GELU at 4 * width; the peer's GEGLU, the same FLOPs to 0.1%), the peer's cosine-sim
attention, and the quantizer (ours factorised into 32 dimensions, l2-normalised; the peer's
cosine-sim VQ at full width with an EMA codebook).

maskgit (transformer): both steps = mask a random subset of the token ids (cosine schedule),
forward with cross-attention to given random text embeddings [B, 16, text_dim], cross-entropy
over the masked tokens, backward, AdamW. Ours runs `configs/maskgit.py` in bench mode with
`text.encoder=t5` (random given embeddings; no checkpoint is read). Architectural differences
that change the FLOPs of a step (everything else matches: width, layers, heads, head_dim =
width / heads, vocabulary, batch, token grid, cross-attention in every block whose key/value
projections read the text embeddings at their own width, full bidirectional self-attention
over all t*h*w tokens, logits over the vocabulary for every token):
  * feed-forward: ours GELU MLP with hidden 4*width (8*width^2 MACs per token); the peer's
    GEGLU with ff_mult=4 has hidden int(8/3*width) and a doubled input projection
    (3*int(8/3*width)*width MACs), within 0.1% of ours.
  * positions: ours adds learned factorized (t, h, w) embeddings; the peer adds a learned
    absolute embedding AND a continuous relative position bias: an MLP (3 -> head_dim ->
    head_dim -> heads) over all (t*h*w)^2 token pairs, once per step, plus a depthwise 3x3x3
    conv (PEG) per block. The bias MLP is ~4 GFLOP forward+backward at 6x8x8 (~2% of the
    step) and ~68 GFLOP at 6x16x16 (~8%); XLA's count of OUR step below excludes it, so our
    MFU is not inflated by it.
  * attention details: the peer's cosine-sim q/k with learned scales, a LayerNorm on the
    text, and 2 learned null key/values in cross-attention (18 instead of 16 keys): all
    elementwise or negligible.
  * our step also draws the text-dropout mask (10% null text, classifier-free guidance),
    computes the masked-token accuracy (an argmax over the logits) and skips non-finite
    updates; the peer's does none of these.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from phenaki_jax.cli import common as cli
from phenaki_jax.cli.bench import machine_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = [
    dict(resolution=32, patch=4, width=256, layers=2, heads=4, codebook=1024, batch=8),
    dict(resolution=64, patch=8, width=512, layers=4, heads=8, codebook=8192, batch=4),
]

MASKGIT_SIZES = [
    dict(grid=(6, 8, 8), width=256, layers=4, heads=4, vocab=1024, text_len=16, text_dim=256,
         batch=16),
    dict(grid=(6, 16, 16), width=512, layers=8, heads=8, vocab=8192, text_len=16,
         text_dim=512, batch=2),
]


def _run(args: list[str], huge_pages: bool = False) -> dict:
    env = dict(os.environ)
    if huge_pages:  # the environment our commands give themselves, here for the peer
        env = cli.huge_pages_env(os.environ) or env
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours_args(size: dict, steps: int) -> list[str]:
    """`phenaki-bench`'s command line for our tokenizer step at `size`."""
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
            f"--config.batch_size={size['batch']}",
            # the peer's model and step: global attention, videos only, no EMA of the weights
            "--config.model.encoder_window=-1",
            "--config.data.image_batch_size=0", "--config.ema_decay=0"]
    return args


def ours(size: dict, steps: int) -> dict:
    return _run(ours_args(size, steps))


def peer(size: dict, steps: int, python: str, huge_pages: bool = False) -> dict:
    args = [python, os.path.join(ROOT, "benchmarks", "peer_pytorch.py"), "--model=cvivit",
            f"--resolution={size['resolution']}", f"--patch={size['patch']}",
            f"--width={size['width']}", f"--spatial_layers={size['layers']}",
            f"--temporal_layers={size['layers']}", f"--heads={size['heads']}",
            f"--codebook={size['codebook']}", f"--batch={size['batch']}", "--frames=11",
            f"--steps={steps}"]
    return _run(args, huge_pages)


def ours_maskgit_args(size: dict, steps: int) -> list[str]:
    """`phenaki-bench`'s command line for our transformer step at `size`."""
    t, h, w = size["grid"]
    args = [sys.executable, "-m", "phenaki_jax.bench", "--config=configs/maskgit.py:variant=tiny",
            f"--steps={steps}", "--config.text.encoder=t5",  # bench: random given embeddings
            f"--config.text.embed_dim={size['text_dim']}",
            f"--config.text.max_length={size['text_len']}",
            f"--config.tokens.grid=({t},{h},{w})",
            f"--config.tokens.vocab_size={size['vocab']}",
            f"--config.model.width={size['width']}",
            f"--config.model.num_layers={size['layers']}",
            f"--config.model.num_heads={size['heads']}",
            f"--config.model.mlp_dim={4 * size['width']}",
            "--config.model.dtype=float32",
            f"--config.batch_size={size['batch']}",
            "--config.data.image_fraction=0"]  # the peer's step has videos only
    return args


def ours_maskgit(size: dict, steps: int) -> dict:
    return _run(ours_maskgit_args(size, steps))


def peer_maskgit(size: dict, steps: int, python: str, huge_pages: bool = False) -> dict:
    t, h, w = size["grid"]
    args = [python, os.path.join(ROOT, "benchmarks", "peer_pytorch.py"), "--model=maskgit",
            f"--grid={t},{h},{w}", f"--width={size['width']}", f"--layers={size['layers']}",
            f"--heads={size['heads']}", f"--vocab={size['vocab']}",
            f"--text_len={size['text_len']}", f"--text_dim={size['text_dim']}",
            f"--batch={size['batch']}", f"--steps={steps}"]
    return _run(args, huge_pages)


def row(stage: str, size: dict, a: dict, b: dict) -> dict:
    return {"stage": stage, "size": size, "ours_step_s": a["step_s"], "peer_step_s": b["step_s"],
            "speedup": b["step_s"] / a["step_s"], "ours_mfu": a["mfu"],
            "ours_params": a["params"], "peer_params": b["params"],
            "matmul_peak_flops_per_s": a["matmul_peak_flops_per_s"],
            "ours_flops_per_step": a["flops_per_step"],
            "ours_page_faults_per_step": a.get("page_faults_per_step")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer_python", default="/work/peer-venv/bin/python")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--stage", choices=("cvivit", "maskgit", "all"), default="all")
    p.add_argument("--peer_huge_pages", action="store_true",
                   help="also time the peer with glibc's heap on huge pages, as ours runs")
    args = p.parse_args()
    os.environ.update(cli.platforms_env(os.environ) or {})  # before JAX starts: no TPU probe
    print(json.dumps({"machine": machine_report()}), flush=True)
    stages = [("cvivit", SIZES, ours, peer), ("maskgit", MASKGIT_SIZES, ours_maskgit, peer_maskgit)]
    for stage, sizes, ours_step, peer_step in stages:
        if args.stage not in (stage, "all"):
            continue
        for size in sizes:
            a = ours_step(size, args.steps)
            b = peer_step(size, args.steps, args.peer_python)
            out = row(stage, size, a, b)
            if stage == "cvivit":
                del out["stage"]  # the cvivit lines keep their original keys
            if args.peer_huge_pages:
                out["peer_step_s_huge_pages"] = peer_step(size, args.steps, args.peer_python,
                                                          True)["step_s"]
            print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
