"""Quality of real video as the field measures it: FVD (the Fréchet distance of I3D
features), PSNR, SSIM and LPIPS, per frame and per clip.

FVD protocol (Unterthiner et al., 2018, as TF-Hub's `i3d-kinetics-400` defines the
features): every frame is resized to 224 x 224 (bilinear) and scaled to [-1, 1]; the 400
Kinetics logits of each whole clip are its features (an 11-frame clip is fed as it is: the
network is convolutional in time and averages its logits over what is left of it); the
distance is between Gaussians fitted to the two sets of features, in float64. FVD over few
clips is biased upwards; compare numbers only over the same clip count.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax import metrics
from phenaki_jax.models import i3d
from phenaki_jax.models.perceptual import Perceptual

I3D_SIZE = 224


@functools.cache
def _i3d() -> tuple[dict[str, jax.Array], Any]:  # noqa: ANN401
    weights = jax.device_put(i3d.load_weights())

    @jax.jit
    def features(w: dict[str, jax.Array], clips: jax.Array) -> jax.Array:
        b, t = clips.shape[:2]
        x = clips.astype(jnp.float32) / 127.5 - 1.0
        x = jax.image.resize(x, (b, t, I3D_SIZE, I3D_SIZE, 3), "bilinear")
        return i3d.logits(w, x)

    return weights, features


def i3d_features(clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """float64 [N, 400]: the FVD features of uint8 clips [N, T, H, W, 3]."""
    weights, features = _i3d()
    out = [np.asarray(jax.device_get(features(weights, clips[i:i + batch_size])))
           for i in range(0, clips.shape[0], batch_size)]
    return np.concatenate(out).astype(np.float64)


def fvd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FVD between two sets of I3D features [N, 400] (at least 2 clips each)."""
    return metrics.frechet_distance(*metrics.gaussian_stats(real),
                                    *metrics.gaussian_stats(fake))


def fvd(real: np.ndarray, fake: np.ndarray) -> float:
    """FVD between two sets of uint8 clips [N, T, H, W, 3]."""
    return fvd_from_features(i3d_features(real), i3d_features(fake))


@functools.cache
def _lpips() -> Any:  # noqa: ANN401
    net = Perceptual("alexnet")
    return jax.jit(lambda a, b: net(a.astype(jnp.float32) / 127.5 - 1.0,
                                    b.astype(jnp.float32) / 127.5 - 1.0))


def lpips_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LPIPS (AlexNet) [B, T] between uint8 clips [B, T, H, W, 3]."""
    bt = a.shape[:2]
    flat = lambda v: jnp.asarray(v).reshape(-1, *v.shape[2:])  # noqa: E731
    return np.asarray(_lpips()(flat(a), flat(b))).reshape(bt)


def reconstruction_report(real: np.ndarray, fake: np.ndarray,
                          real_features: np.ndarray | None = None) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS per clip (means over frames) and overall, and FVD, of uint8
    clips [N, T, H, W, 3] against their reconstructions (`real_features`: the real clips'
    I3D features, if the caller has them already)."""
    if real_features is None:
        real_features = i3d_features(real)
    psnr = np.asarray(metrics.psnr_per_clip(jnp.asarray(fake), jnp.asarray(real)))
    ssim = np.asarray(metrics.ssim_per_frame(jnp.asarray(fake), jnp.asarray(real)))
    lpips = lpips_per_frame(fake, real)
    return {"clips": int(real.shape[0]), "psnr": float(psnr.mean()),
            "ssim": float(ssim.mean()), "lpips": float(lpips.mean()),
            "fvd": fvd_from_features(real_features, i3d_features(fake)),
            "per_clip": {"psnr": psnr.tolist(), "ssim": ssim.mean(1).tolist(),
                         "lpips": lpips.mean(1).tolist()}}
