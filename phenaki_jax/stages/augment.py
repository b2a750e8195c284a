"""Random symmetries and shifts of training clips, drawn per clip from the step's RNG (so a
resumed run draws the same ones), for a tokenizer trained on few real videos.

A tokenizer's job is local: a tubelet's pixels should code the same wherever the scene came
from. A mirrored, rotated, shifted or time-reversed clip is as real as the original, so these
multiply what a small data set shows without leaving the distribution of natural pixels.

Operations (`config.data.augment`, comma-separated, applied in this order; parsed by
`validation.augment_ops`):
- `flip`: mirror left-right, half the clips;
- `dihedral`: one of the 8 symmetries of the square (rotations by multiples of 90 degrees and
  their mirrors), uniformly (frames are square: `config.data.resolution`);
- `reverse`: play the clip backwards, half the videos (an image's padding frames stay last);
- `channels`: one of the 6 orders of the colour channels, uniformly. Not natural colours, but
  the same edges, textures and motion in other hues: the codes learn shape apart from colour.
- `shift`: translate the whole clip by a whole number of pixels, up to an eighth of the frame
  in each direction, uniformly, the uncovered border filled by mirroring the frame's edge. A
  patch grid then cuts the scene at another place: a few videos give many more distinct
  tubelets, with natural colours and orientation.
- `zoom`: half the clips shown at half size (each 2x2 block of pixels averaged), the frame
  filled by that picture and its three mirror images: twice the detail per patch, and half the
  motion per frame, of the original (frame sides even).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _coin(rng: Array, n: int) -> Array:
    return jax.random.bernoulli(rng, 0.5, (n,))


def _where(cond: Array, a: Array, b: Array) -> Array:
    return jnp.where(cond.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def augment(frames: Array, rng: Array, ops: Sequence[str], is_image: Array | None = None
            ) -> Array:
    """frames [B, T, H, W, C] -> the same clips, each under its own random symmetries.

    `is_image` [B] (nonzero for an image padded to T frames) keeps those clips' time order.
    """
    b = frames.shape[0]
    x = frames
    if "flip" in ops:
        x = _where(_coin(jax.random.fold_in(rng, 0), b), x[:, :, :, ::-1], x)
    if "dihedral" in ops:
        # Every symmetry of the square is a transpose or not, then a mirror of rows or not,
        # then of columns or not: three independent coins make the 8 uniformly.
        x = _where(_coin(jax.random.fold_in(rng, 1), b), jnp.swapaxes(x, 2, 3), x)
        x = _where(_coin(jax.random.fold_in(rng, 2), b), x[:, :, ::-1], x)
        x = _where(_coin(jax.random.fold_in(rng, 3), b), x[:, :, :, ::-1], x)
    if "reverse" in ops:
        flip = _coin(jax.random.fold_in(rng, 4), b)
        if is_image is not None:
            flip = flip & (is_image == 0)
        x = _where(flip, x[:, ::-1], x)
    if "channels" in ops:
        orders = jnp.asarray(list(itertools.permutations(range(x.shape[-1]))), jnp.int32)
        k = jax.random.randint(jax.random.fold_in(rng, 5), (b,), 0, orders.shape[0])
        x = jnp.take_along_axis(x, orders[k].reshape((b,) + (1,) * (x.ndim - 2) + (-1,)),
                                axis=-1)
    if "shift" in ops:
        x = _shift(x, jax.random.fold_in(rng, 6))
    if "zoom" in ops:
        x = _where(_coin(jax.random.fold_in(rng, 7), b), zoom_out(x), x)
    return x


def zoom_out(x: Array) -> Array:
    """[B, T, H, W, C] -> each frame at half size, mirrored into a 2x2 mosaic of H x W."""
    b, t, h, w, c = x.shape
    small = x.astype(jnp.float32).reshape(b, t, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))
    if jnp.issubdtype(x.dtype, jnp.integer):
        small = jnp.round(small)
    small = small.astype(x.dtype)
    top = jnp.concatenate([small, small[:, :, :, ::-1]], axis=3)
    return jnp.concatenate([top, top[:, :, ::-1]], axis=2)


def _shift(x: Array, rng: Array) -> Array:
    """Each clip of [B, T, H, W, C] translated by its own (dy, dx), |dy| <= H // 8 and
    |dx| <= W // 8, with reflected borders."""
    b, t, h, w, c = x.shape
    sh, sw = h // 8, w // 8
    padded = jnp.pad(x, ((0, 0), (0, 0), (sh, sh), (sw, sw), (0, 0)), mode="reflect")
    dy = jax.random.randint(jax.random.fold_in(rng, 0), (b,), 0, 2 * sh + 1)
    dx = jax.random.randint(jax.random.fold_in(rng, 1), (b,), 0, 2 * sw + 1)

    def crop(clip: Array, y0: Array, x0: Array) -> Array:
        return jax.lax.dynamic_slice(clip, (0, y0, x0, 0), (t, h, w, c))

    return jax.vmap(crop)(padded, dy, dx)
