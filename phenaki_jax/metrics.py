"""Image and video quality measures shared by training, evaluation and the commands."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def psnr_per_clip(a: Array, b: Array, weights: Array | None = None) -> Array:
    """PSNR in dB between uint8 clips [B, T, H, W, 3]; `weights` [B, T] selects frames."""
    err = jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)).mean(axis=(2, 3, 4))
    if weights is None:
        mse = err.mean(axis=1)
    else:
        mse = (err * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
    return 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10))
