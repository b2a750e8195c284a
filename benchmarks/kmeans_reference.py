"""What a codebook of the training pixels alone reconstructs: the context-free reference for a
tokenizer with the same token grid and codebook size, one JSON line:

    .venv/bin/python benchmarks/real_video_peer.py --workdir=W     # prepares W/train, W/eval
    .venv/bin/python benchmarks/kmeans_reference.py --workdir=W [--codes=1024] [--augment=...] \
        [--table=prepared:DIR] [--predictive]

k-means (Lloyd's iterations from random training vectors; an emptied centroid restarts at a
random vector) over the training clips' tokens as C-ViViT cuts them: frame 0 in 8x8 patches,
later frames in 2x8x8 tubelets, each kind with its own `--codes` centroids (the tokenizer has
one codebook for both: the reference is the more generous). Each held-out token is replaced by
its nearest centroid; PSNR, SSIM, LPIPS and FVD of the clips are computed as `phenaki-eval`
computes them. `--augment` adds the symmetries of `data.augment` to the training vectors
(every mirror, rotation, channel order or zoom, not a random draw). A tokenizer whose held-out PSNR
is near this reference has learnt about what a nearest-centroid table of the training pixels
knows, and made no use of its tokens' context.

`--predictive` is the reference for `model.temporal_residual`: frame 0 as above, each tubelet
coded as its difference from the reconstructed last frame before it (closed loop, the table's
own reconstruction), with a table of such differences.

`--table` builds the table from other prepared clips than W/train (for example another copy of
the held-out scene: what a table that has seen the scene reconstructs). `block_mean_psnr` is
the PSNR of replacing every 8x8 (and 4x4) block of each frame by its exact mean colour, for the
held-out clips and the table's: how much detail below the patch size each set holds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIG = "configs/cvivit_real.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/phenaki_real_video")
    parser.add_argument("--codes", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--augment", default="", help="a subset of flip,dihedral,channels,zoom")
    parser.add_argument("--table", default="", help="prepared:DIR, the clips the table is "
                        "built from (default: the workdir's training set)")
    parser.add_argument("--predictive", action="store_true", help="code each tubelet as its "
                        "difference from the reconstructed last frame before it, as "
                        "model.temporal_residual does, with a table of such differences")
    parser.add_argument("--max_vectors", type=int, default=60_000,
                        help="a random subset of the training vectors beyond this many")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from phenaki_jax import metrics
    from phenaki_jax.config import parsing, validation
    from phenaki_jax.data import pipeline
    from phenaki_jax.evaluation import real_video, video_metrics
    from phenaki_jax.models.cvivit import CViViT
    from phenaki_jax.stages import augment

    ops = validation.augment_ops(args.augment)
    if "reverse" in ops:
        raise SystemExit("--augment=reverse: a codebook of tubelets does not see time order "
                         "beyond its tubelet; leave it out")
    if "shift" in ops:
        raise SystemExit("--augment=shift: the table takes every view of a clip, and 64 "
                         "patch-grid offsets of each are more than it holds; leave it out")
    config = parsing.load_config_file(os.path.join(ROOT, CONFIG))
    config.data.name = args.table or f"prepared:{os.path.join(args.workdir, 'train')}"
    train = pipeline.split_examples(config, config.data.train_split, 100_000)["frames"]
    held_out, _ = real_video.validation_clips(
        config, f"prepared:{os.path.join(args.workdir, 'eval')}", 10_000)
    if not len(train):
        raise SystemExit(f"--workdir={args.workdir}: no training clips in {config.data.name}")

    views = [train]
    if "flip" in ops and "dihedral" not in ops:  # the square's symmetries hold the mirror
        views += [v[:, :, :, ::-1] for v in views]
    if "dihedral" in ops:
        views = [np.rot90(v, k, axes=(2, 3)) for v in views for k in range(4)]
        views += [v[:, :, :, ::-1] for v in views]
    if "channels" in ops:
        views = [v[..., list(o)] for v in views for o in itertools.permutations(range(3))]
    if "zoom" in ops:
        views += [np.asarray(augment.zoom_out(jnp.asarray(v))) for v in views]
    train_all = np.concatenate(views)

    # The tokenizer's own cut into first-frame patches and tubelets, and its inverse: neither
    # touches a parameter, so the unbound module serves.
    model = CViViT.from_config(config)

    def tokens(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, T, R, R, 3] -> float32 (first [N, 1, h, w, D0], rest [N, t, h, w, D])."""
        first, rest = model._patchify(jnp.asarray(clips, jnp.float32))
        return np.asarray(first), np.asarray(rest)

    @jax.jit
    def nearest(x: jax.Array, centroids: jax.Array) -> jax.Array:
        d = (centroids ** 2).sum(1)[None] - 2 * x @ centroids.T
        return jnp.argmin(d, axis=1)

    rng = np.random.default_rng(0)

    def kmeans(vectors: np.ndarray, centroids: np.ndarray | None = None) -> np.ndarray:
        x = vectors.reshape(-1, vectors.shape[-1])
        if len(x) > args.max_vectors:
            x = x[rng.choice(len(x), args.max_vectors, replace=False)]
        if centroids is None:
            centroids = x[rng.choice(len(x), args.codes, replace=len(x) < args.codes)]
        for _ in range(args.iterations):
            a = np.asarray(nearest(jnp.asarray(x), jnp.asarray(centroids)))
            sums = np.zeros_like(centroids)
            np.add.at(sums, a, x)
            n = np.bincount(a, minlength=args.codes)
            centroids = np.where((n == 0)[:, None], x[rng.choice(len(x), args.codes)],
                                 sums / np.maximum(n, 1)[:, None])
        return centroids

    def lookup(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        y = vectors.reshape(-1, vectors.shape[-1])
        return centroids[np.asarray(nearest(jnp.asarray(y), jnp.asarray(centroids)))].reshape(
            vectors.shape)

    def predictive(first: np.ndarray, rest: np.ndarray, tables: tuple[np.ndarray, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Closed-loop coding: frame 0 from its table; each tubelet as its difference from the
        reconstructed last frame before it, from the change table. (first, rest) rebuilt."""
        first_q = lookup(first, tables[0])
        base, out = first_q[:, 0], []
        for j in range(rest.shape[1]):
            pred = np.concatenate([base] * config.model.temporal_patch_size, axis=-1)
            out.append(pred + lookup(rest[:, j] - pred, tables[1]))
            base = out[-1][..., -base.shape[-1]:]
        return first_q, np.stack(out, axis=1)

    def predictions(first: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """Each tubelet's prediction in (first, rest): the frame before it, repeated."""
        before = np.concatenate([first, rest[:, :-1, ..., -first.shape[-1]:]], axis=1)
        return np.concatenate([before] * config.model.temporal_patch_size, axis=-1)

    (train_first, train_rest), (held_first, held_rest) = tokens(train_all), tokens(held_out)
    tables = (kmeans(train_first), kmeans(train_rest))
    if args.predictive:
        # The change table is fitted to the differences from real previous frames, then twice
        # more to those from the table's own reconstruction, which is what it will code.
        tables = (tables[0], kmeans(train_rest - predictions(train_first, train_rest)))
        for _ in range(2):
            recon = predictive(train_first, train_rest, tables)
            tables = (tables[0], kmeans(train_rest - predictions(*recon), tables[1]))
        parts = predictive(held_first, held_rest, tables)
    else:
        parts = (lookup(held_first, tables[0]), lookup(held_rest, tables[1]))
    recon = np.asarray(model._unpatchify(*map(jnp.asarray, parts)))
    recon = np.clip(np.round(recon), 0, 255).astype(np.uint8)
    report = video_metrics.reconstruction_report(held_out, recon)
    report.pop("per_clip")
    block_means = {name: {f"{b}x{b}": round(float(np.mean(metrics.psnr_per_clip(
                              jnp.asarray(_block_means(clips, b)), jnp.asarray(clips)))), 2)
                          for b in (8, 4)}
                   for name, clips in (("held_out", held_out), ("table_clips", train))}
    print(json.dumps({"train_clips": int(len(train)), "table": config.data.name,
                      "codes": args.codes, "augment": list(ops),
                      "predictive": args.predictive, **report,
                      "block_mean_psnr": block_means}))


def _block_means(clips: np.ndarray, b: int) -> np.ndarray:
    """uint8 [N, T, H, W, C] -> each frame's b x b blocks replaced by their mean colour."""
    n, t, h, w, c = clips.shape
    x = clips.astype(np.float64).reshape(n, t, h // b, b, w // b, b, c)
    m = np.broadcast_to(x.mean(axis=(3, 5), keepdims=True), x.shape).reshape(clips.shape)
    return np.clip(np.round(m), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    main()
