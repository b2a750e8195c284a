"""Image and video quality measures shared by training, evaluation and the commands."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def psnr_per_clip(a: Array, b: Array, weights: Array | None = None) -> Array:
    """PSNR in dB between uint8 clips [B, T, H, W, 3]; `weights` [B, T] selects frames."""
    err = jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)).mean(axis=(2, 3, 4))
    if weights is None:
        mse = err.mean(axis=1)
    else:
        mse = (err * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
    return 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim_per_frame(a: Array, b: Array) -> Array:
    """SSIM [B, T] of uint8 clips [B, T, H, W, 3]: the standard definition (Wang et al. 2004)
    as `tf.image.ssim` computes it: an 11-tap Gaussian window (sigma 1.5) applied without
    padding, K1 = 0.01, K2 = 0.03, data range 255, averaged over positions and channels."""
    x, y = a.astype(jnp.float32), b.astype(jnp.float32)
    bt, (h, w, c) = x.shape[:2], x.shape[2:]
    g = _gaussian_window()
    if min(h, w) < g.shape[0]:
        raise ValueError(f"SSIM needs frames of at least {g.shape[0]}x{g.shape[0]}, got {h}x{w}")

    def blur(v: Array) -> Array:  # [N, H, W] -> [N, H - 10, W - 10], separably
        v = v[:, None]
        for kernel in (g.reshape(1, 1, -1, 1), g.reshape(1, 1, 1, -1)):
            v = jax.lax.conv_general_dilated(v, kernel, (1, 1), "VALID")
        return v[:, 0]

    planes = lambda v: v.transpose(0, 1, 4, 2, 3).reshape(-1, h, w)  # noqa: E731
    px, py = planes(x), planes(y)
    mx, my = blur(px), blur(py)
    sxx, syy, sxy = blur(px * px) - mx * mx, blur(py * py) - my * my, blur(px * py) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(*bt, c, -1).mean(axis=(2, 3))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """The Fréchet distance between two Gaussians, in float64:
    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the matrix square root is
    taken from the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric positive
    semi-definite and has the same eigenvalues as S1 S2."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    vals, vecs = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    m = root1 @ s2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features [N, D] in float64 (the unbiased covariance)."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)
