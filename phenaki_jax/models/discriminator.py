"""StyleGAN-style video discriminator and the losses of the adversarial game.

Residual blocks of 3x3x3 convolutions with leaky ReLU, spatial downsampling by blurred average
pooling until 4x4, then a dense head, as in StyleGAN2's residual discriminator extended to
video (as MAGVIT does). Training uses the non-saturating logistic loss with LeCam
regularisation (Tseng et al. 2021), which keeps the discriminator from running away on the
small data sets this stack is tested on.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from phenaki_jax.models import layers

Array = jax.Array

_conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
_AXES = ("batch", "time", "height", "width", "activation_embed")


def _blur_downsample(x: Array) -> Array:
    """[B, T, H, W, C] -> [B, T, H/2, W/2, C] with a [1, 3, 3, 1] binomial blur."""
    k1 = jnp.array([1.0, 3.0, 3.0, 1.0], x.dtype)
    k2 = jnp.outer(k1, k1)
    k2 = k2 / k2.sum()
    b, t, h, w, c = x.shape
    y = x.reshape(b * t, h, w, c)
    kernel = jnp.tile(k2[:, :, None, None], (1, 1, 1, c))
    y = jax.lax.conv_general_dilated(y, kernel, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c)
    return y.reshape(b, t, h // 2, w // 2, c)


class _ResBlock(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def conv(f: int, k: int, name: str) -> nn.Conv:
            return nn.Conv(f, (k, k, k), padding="SAME", dtype=self.dtype, name=name,
                           use_bias=k > 1,
                           kernel_init=nn.with_logical_partitioning(
                               _conv_init, (None, None, None, "channels", "embed")))

        h = nn.leaky_relu(conv(x.shape[-1], 3, "conv1")(x), 0.2)
        h = nn.leaky_relu(conv(self.features, 3, "conv2")(h), 0.2)
        h = _blur_downsample(h)
        skip = conv(self.features, 1, "skip")(_blur_downsample(x))
        return (h + skip) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """Video [B, T, H, W, 3] in [-1, 1] -> logits [B]. Its full-resolution activations are
    the largest of a C-ViViT step (128 channels over 11 frames of 128 x 128): `dtype` bfloat16
    halves them, `remat` (a `layers.REMAT_POLICIES` name) keeps only each block's input, and
    every block's output is pinned to the batch sharding."""

    channels: int = 64
    max_channels: int = 512
    dtype: Any = jnp.float32
    remat: str | bool = "none"

    @nn.compact
    def __call__(self, video: Array) -> Array:
        x = nn.Conv(self.channels, (3, 3, 3), padding="SAME", dtype=self.dtype, name="stem",
                    kernel_init=nn.with_logical_partitioning(
                        _conv_init, (None, None, None, "channels", "embed")))(video)
        x = nn.with_logical_constraint(nn.leaky_relu(x, 0.2), _AXES)
        ch = self.channels
        i = 0
        block = layers.maybe_remat(_ResBlock, self.remat)
        while x.shape[2] > 4:
            ch = min(ch * 2, self.max_channels)
            x = nn.with_logical_constraint(block(ch, self.dtype, name=f"block_{i}")(x), _AXES)
            i += 1
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)
        x = nn.leaky_relu(nn.Dense(ch, name="fc")(x), 0.2)
        return nn.Dense(1, name="logit")(x)[:, 0]


def generator_loss(fake_logits: Array) -> Array:
    """Non-saturating generator loss: -log sigmoid(D(fake))."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def lecam_penalty(real_logits: Array, fake_logits: Array, ema_real: Array,
                  ema_fake: Array) -> Array:
    """LeCam regulariser: pulls D(real) towards the EMA of D(fake) and vice versa."""
    return (jnp.mean(jnp.square(jax.nn.relu(real_logits - ema_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake_logits))))
