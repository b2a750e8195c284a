"""What a codebook of the training pixels alone reconstructs: the context-free reference for a
tokenizer with the same token grid and codebook size, one JSON line:

    .venv/bin/python benchmarks/real_video_peer.py --workdir=W     # prepares W/train, W/eval
    .venv/bin/python benchmarks/kmeans_reference.py --workdir=W [--codes=1024] [--augment=...]

k-means (Lloyd's iterations from random training vectors; an emptied centroid restarts at a
random vector) over the training clips' tokens as C-ViViT cuts them: frame 0 in 8x8 patches,
later frames in 2x8x8 tubelets, each kind with its own `--codes` centroids (the tokenizer has
one codebook for both: the reference is the more generous). Each held-out token is replaced by
its nearest centroid; PSNR, SSIM, LPIPS and FVD of the clips are computed as `phenaki-eval`
computes them. `--augment` adds the symmetries of `data.augment` to the training vectors
(every mirror, rotation or channel order, not a random draw). A tokenizer whose held-out PSNR
is near this reference has learnt about what a nearest-centroid table of the training pixels
knows, and made no use of its tokens' context.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIG = "configs/cvivit_real.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/phenaki_real_video")
    parser.add_argument("--codes", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--augment", default="", help="a subset of flip,dihedral,channels")
    parser.add_argument("--max_vectors", type=int, default=60_000,
                        help="a random subset of the training vectors beyond this many")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from phenaki_jax.config import parsing, validation
    from phenaki_jax.data import pipeline
    from phenaki_jax.evaluation import real_video, video_metrics

    ops = validation.augment_ops(args.augment)
    if "reverse" in ops:
        raise SystemExit("--augment=reverse: a codebook of tubelets does not see time order "
                         "beyond its tubelet; leave it out")
    config = parsing.load_config_file(os.path.join(ROOT, CONFIG))
    p, pt, r = config.model.patch_size, config.model.temporal_patch_size, config.data.resolution
    config.data.name = f"prepared:{os.path.join(args.workdir, 'train')}"
    train = pipeline.split_examples(config, config.data.train_split, 100_000)["frames"]
    held_out, _ = real_video.validation_clips(
        config, f"prepared:{os.path.join(args.workdir, 'eval')}", 10_000)
    if not len(train):
        raise SystemExit(f"--workdir={args.workdir}: no training clips in {config.data.name}")

    views = [train]
    if "flip" in ops:
        views += [v[:, :, :, ::-1] for v in views]
    if "dihedral" in ops:
        views = [np.rot90(v, k, axes=(2, 3)) for v in views for k in range(4)]
        views += [v[:, :, :, ::-1] for v in views]
    if "channels" in ops:
        views = [v[..., list(o)] for v in views for o in itertools.permutations(range(3))]
    train_all = np.concatenate(views)

    def tokens(clips: np.ndarray, first: bool) -> np.ndarray:
        """uint8 [N, T, R, R, 3] -> float32 token vectors [N, t, h, w, D], frame 0's (t = 1)
        or the tubelets'."""
        x = clips[:, :1] if first else clips[:, 1:]
        n, t = x.shape[:2]
        tp = 1 if first else pt
        x = x.reshape(n, t // tp, tp, r // p, p, r // p, p, 3).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(n, t // tp, r // p, r // p, tp * p * p * 3).astype(np.float32)

    def frames(x: np.ndarray, first: bool) -> np.ndarray:
        """The inverse of `tokens`, rounded to uint8."""
        n, t = x.shape[:2]
        tp = 1 if first else pt
        x = x.reshape(n, t, r // p, r // p, tp, p, p, 3).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return np.clip(np.round(x.reshape(n, t * tp, r, r, 3)), 0, 255).astype(np.uint8)

    @jax.jit
    def nearest(x: jax.Array, centroids: jax.Array) -> jax.Array:
        d = (centroids ** 2).sum(1)[None] - 2 * x @ centroids.T
        return jnp.argmin(d, axis=1)

    rng = np.random.default_rng(0)
    parts = []
    for first in (True, False):
        x = tokens(train_all, first)
        x = x.reshape(-1, x.shape[-1])
        if len(x) > args.max_vectors:
            x = x[rng.choice(len(x), args.max_vectors, replace=False)]
        centroids = x[rng.choice(len(x), args.codes, replace=len(x) < args.codes)]
        for _ in range(args.iterations):
            a = np.asarray(nearest(jnp.asarray(x), jnp.asarray(centroids)))
            sums = np.zeros_like(centroids)
            np.add.at(sums, a, x)
            n = np.bincount(a, minlength=args.codes)
            centroids = np.where((n == 0)[:, None], x[rng.choice(len(x), args.codes)],
                                 sums / np.maximum(n, 1)[:, None])
        y = tokens(held_out, first)
        ids = np.asarray(nearest(jnp.asarray(y.reshape(-1, y.shape[-1])), jnp.asarray(centroids)))
        parts.append(frames(centroids[ids].reshape(y.shape), first))
    recon = np.concatenate(parts, axis=1)
    report = video_metrics.reconstruction_report(held_out, recon)
    report.pop("per_clip")
    print(json.dumps({"train_clips": int(len(train)), "codes": args.codes,
                      "augment": list(ops), **report}))


if __name__ == "__main__":
    main()
