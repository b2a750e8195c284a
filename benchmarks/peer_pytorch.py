"""Training-step benchmark of the PyTorch peer ``phenaki-pytorch`` 0.5.0 (lucidrains), on CPU.

Run it with the peer's own venv (made by ``benchmarks/setup_peer.sh``), never with ours::

    /work/peer-venv/bin/python benchmarks/peer_pytorch.py --model=cvivit --resolution=32 \
        --patch=4 --width=256 --spatial_layers=2 --temporal_layers=2 --heads=4 \
        --codebook=1024 --batch=8 --frames=11 --steps=5
    /work/peer-venv/bin/python benchmarks/peer_pytorch.py --model=maskgit --grid=6,8,8 \
        --width=256 --layers=4 --heads=4 --vocab=1024 --text_len=16 --text_dim=256 \
        --batch=16 --steps=5

It prints ONE JSON line: peer, model, params (trainable), step_s (median seconds per step
over ``--steps`` timed steps after 1 warm-up step), batch_size and the config.  torch and
phenaki_pytorch are imported inside functions only, so ruff and phenaki_jax never need them.

How the peer is configured (so the match can be audited):

CViViT -- one step = forward, backward, AdamW step on ``torch.rand(B, 3, T, H, W)``::

    CViViT(dim=width, codebook_size=codebook, image_size=resolution, patch_size=patch,
           temporal_patch_size=2, spatial_depth=spatial_layers, temporal_depth=temporal_layers,
           dim_head=width // heads, heads=heads, channels=3,
           use_vgg_and_gan=False,            # no VGG perceptual loss, no discriminator / GAN
           lookup_free_quantization=False)   # plain VQ: VectorQuantize(dim, codebook_size,
                                             #   use_cosine_sim=True), EMA codebook (a buffer)
    loss = cvivit(video)   # with use_vgg_and_gan=False the peer returns the MSE
                           # reconstruction loss only (its VQ commitment loss is dropped)

  T = frames must be 1 + 2k: the first frame is patched alone, the rest in pairs, so the
  token grid is (1 + (T-1)/2) x (R/p) x (R/p).  Spatial blocks: bidirectional attention with
  a continuous (MLP) relative position bias; temporal blocks: causal attention with ALiBi and
  a causal depthwise-conv PEG.  The peer's feed-forward is fixed at ff_mult=4 (GEGLU, hidden
  int(4 * 2/3 * dim), no biases); attention uses cosine-sim q/k with learned scales.

MaskGit -- one step = forward, backward, AdamW step, exactly the MaskGit part of the peer's
``Phenaki.forward`` (copied here because ``Phenaki(...)`` itself needs a T5 from the hub)::

    MaskGit(dim=width, num_tokens=vocab, max_seq_len=t*h*w, depth=layers, heads=heads,
            dim_head=width // heads, dim_context=text_dim, unconditional=False)
            # depth/dim_context go through **kwargs to the Transformer; ff_mult stays 4;
            # every block: PEG, self-attention (3-D continuous position bias), cross-attention
            # to the text (2 null k/v), GEGLU feed-forward (hidden int(8/3 * width), input
            # projection doubled: the FLOPs of our GELU MLP of hidden 4 * width to 0.1%).
            # Checked by forward hooks: every block runs PEG, self-attn, cross-attn and FF, and
            # each cross-attn's to_kv reads the text at text_dim ([2*width, text_dim] weight).
    ids  = randint(vocab, (B, t, h, w));  text = randn(B, text_len, text_dim)
    prob = cos(randint(0, 18, (B,)) * pi / 2 / 18)     # Phenaki's cosine schedule, steps=18
    mask = get_mask_subset_with_prob(ones(B, t*h*w), prob)    # the peer's own helper
    logits = maskgit(where(mask, maskgit.mask_id, ids), video_mask=ones, cond_drop_prob=0.,
                     text_mask=ones(B, text_len), context=text)
    loss = cross_entropy(logits[mask], ids[mask])

  cond_drop_prob=0 is what the peer's Phenaki.forward really uses in 0.5.0 (it resets the
  argument to 0 before ``default(...)``), and it does not change the cost of a step.

Optimizer for both: the peer's ``get_optimizer(params, lr=1e-4, wd=1e-2)`` = torch AdamW
(betas 0.9/0.99, no weight decay on parameters with ndim < 2).  Float32, eager mode,
``torch.set_num_threads(2)``.

Environment fix: PyPI's torchvision 0.28.0 (the only one for torch 2.13.0) is a CUDA build
whose C extension cannot load next to the CPU torch wheel, and its import then dies with
"operator torchvision::nms does not exist".  phenaki_pytorch imports torchvision at import
time but never calls its ops here, so if that import fails this script declares the two op
schemas torchvision registers fakes for (nms, qnms) and imports again.  Nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

PEER = "phenaki-pytorch 0.5.0"
PEER_VERSION = "0.5.0"
TEMPORAL_PATCH = 2
MASK_SCHEDULE_STEPS = 18  # Phenaki(steps=18) default; sets the cosine mask-ratio schedule


def _import_torchvision_with_shim():
    """Import torchvision; if its CUDA-only C extension broke the import, declare the ops."""
    import torch

    try:
        import torchvision  # noqa: F401

        return False
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    for op in ("nms", "qnms"):
        torch.library.define(
            f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        )
    import torchvision  # noqa: F401, F811

    return True


def import_peer():
    """Return (torch, phenaki_pytorch package, whether the torchvision shim was needed)."""
    import torch

    shimmed = _import_torchvision_with_shim()
    import phenaki_pytorch

    return torch, phenaki_pytorch, shimmed


def _versions(torch, shimmed: bool) -> dict:
    from importlib.metadata import version

    names = ("phenaki-pytorch", "vector-quantize-pytorch", "torchvision", "einops")
    out = {"torch": torch.__version__, "torchvision_shim": shimmed}
    out.update({n: version(n) for n in names})
    return out


def _count_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _optimizer(model):
    from phenaki_pytorch.optimizer import get_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    return get_optimizer(params, lr=1e-4, wd=1e-2)  # wd > 0 -> torch.optim.AdamW


def build_cvivit(args: argparse.Namespace, torch, peer):
    if (args.frames - 1) % TEMPORAL_PATCH:
        raise SystemExit(f"--frames must be 1 + {TEMPORAL_PATCH}k, got {args.frames}")
    if args.width % args.heads:
        raise SystemExit("--width must be divisible by --heads")
    model = make_cvivit(args, peer)
    model.train()
    opt = _optimizer(model)
    shape = (args.batch, 3, args.frames, args.resolution, args.resolution)
    video = torch.rand(shape)

    def step() -> float:
        loss = model(video)  # reconstruction MSE only (use_vgg_and_gan=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return model, step, cvivit_config(args)


def make_cvivit(args: argparse.Namespace, peer):
    """The peer's CViViT at the sizes in `args` (no VGG loss, no GAN, plain VQ)."""
    return peer.CViViT(
        dim=args.width,
        codebook_size=args.codebook,
        image_size=args.resolution,
        patch_size=args.patch,
        temporal_patch_size=TEMPORAL_PATCH,
        spatial_depth=args.spatial_layers,
        temporal_depth=args.temporal_layers,
        dim_head=args.width // args.heads,
        heads=args.heads,
        channels=3,
        use_vgg_and_gan=False,
        lookup_free_quantization=False,
    )


def cvivit_config(args: argparse.Namespace) -> dict:
    return {
        "resolution": args.resolution,
        "patch": args.patch,
        "temporal_patch": TEMPORAL_PATCH,
        "frames": args.frames,
        "token_grid": [1 + (args.frames - 1) // TEMPORAL_PATCH]
        + [args.resolution // args.patch] * 2,
        "width": args.width,
        "heads": args.heads,
        "dim_head": args.width // args.heads,
        "spatial_layers": args.spatial_layers,
        "temporal_layers": args.temporal_layers,
        "codebook": args.codebook,
        "quantizer": "VectorQuantize(use_cosine_sim=True), LFQ off",
        "losses": "recon MSE only (no VGG, no GAN)",
    }


def build_maskgit(args: argparse.Namespace, torch, peer):
    import math

    import torch.nn.functional as F
    from phenaki_pytorch.phenaki_pytorch import get_mask_subset_with_prob

    if args.width % args.heads:
        raise SystemExit("--width must be divisible by --heads")
    t, h, w = args.grid
    n = t * h * w
    model = peer.MaskGit(
        dim=args.width,
        num_tokens=args.vocab,
        max_seq_len=n,
        depth=args.layers,
        heads=args.heads,
        dim_head=args.width // args.heads,
        dim_context=args.text_dim,
        unconditional=False,
    )
    model.train()
    opt = _optimizer(model)
    b = args.batch
    ids = torch.randint(0, args.vocab, (b, n))
    text = torch.randn(b, args.text_len, args.text_dim)
    text_mask = torch.ones(b, args.text_len, dtype=torch.bool)
    video_mask = torch.ones(b, n, dtype=torch.bool)

    def step() -> float:
        rand_step = torch.randint(0, MASK_SCHEDULE_STEPS, (b,))
        prob = torch.cos(rand_step * math.pi * 0.5 / MASK_SCHEDULE_STEPS)
        mask = get_mask_subset_with_prob(video_mask, prob)
        masked = torch.where(mask, model.mask_id, ids).reshape(b, t, h, w)
        logits = model(
            masked,
            video_mask=video_mask,
            cond_drop_prob=0.0,
            text_mask=text_mask,
            context=text,
        )
        loss = F.cross_entropy(logits[mask], ids[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    config = {
        "grid": [t, h, w],
        "seq_len": n,
        "width": args.width,
        "heads": args.heads,
        "dim_head": args.width // args.heads,
        "layers": args.layers,
        "vocab": args.vocab,
        "text_len": args.text_len,
        "text_dim": args.text_dim,
        "mask_schedule": f"cosine, {MASK_SCHEDULE_STEPS} steps (peer's Phenaki.forward)",
    }
    return model, step, config


def _grid(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--grid must be t,h,w")
    return parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("cvivit", "maskgit"))
    p.add_argument("--check", action="store_true", help="only import the peer, print versions")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 1 warm-up step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    # cvivit
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--frames", type=int, default=11)
    p.add_argument("--spatial_layers", type=int, default=2)
    p.add_argument("--temporal_layers", type=int, default=2)
    p.add_argument("--codebook", type=int, default=1024)
    # maskgit
    p.add_argument("--grid", type=_grid, default=(6, 8, 8))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--text_len", type=int, default=16)
    p.add_argument("--text_dim", type=int, default=256)
    args = p.parse_args(argv)
    if not args.check and args.model is None:
        p.error("--model is required (or --check)")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch, peer, shimmed = import_peer()
    versions = _versions(torch, shimmed)
    if versions["phenaki-pytorch"] != PEER_VERSION:
        raise SystemExit(f"expected phenaki-pytorch {PEER_VERSION}, got {versions}")
    if args.check:
        print(json.dumps({"peer": PEER, "versions": versions}))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    build = build_cvivit if args.model == "cvivit" else build_maskgit
    model, step, config = build(args, torch, peer)

    t0 = time.perf_counter()
    warm_loss = step()
    warmup_s = time.perf_counter() - t0
    times = []
    loss = warm_loss
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)

    result = {
        "peer": PEER,
        "model": args.model,
        "params": _count_params(model),
        "step_s": statistics.median(times),
        "batch_size": args.batch,
        **config,
        "steps": args.steps,
        "step_times_s": [round(x, 4) for x in times],
        "warmup_s": round(warmup_s, 4),
        "loss_first": round(warm_loss, 5),
        "loss_last": round(loss, 5),
        "optimizer": "AdamW (peer get_optimizer, lr 1e-4, wd 1e-2)",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "versions": versions,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
