"""The fused attention implementations against a NumPy softmax: `splash` (Pallas, run by its
interpreter on CPU) and the `jax.nn.dot_product_attention` call that `cudnn` makes (checked
with jax's XLA implementation, the layout and masking being ours), and the Attention layer
giving the same output whichever implementation computes it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import layers


def reference(q, k, v, valid):
    """softmax over the valid keys, in float64."""
    logits = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64))
    logits = np.where(valid[:, None, None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v.astype(np.float64))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 128, 2, 16)).astype(np.float32) for _ in range(3))
    valid = np.ones((2, 128), bool)
    valid[1, 88:] = False  # the second example's last 40 keys are padding
    return q * 0.25, k, v, valid


def test_splash_matches_the_softmax(inputs):
    q, k, v, valid = inputs
    out = layers.splash_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                  jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, valid), atol=2e-5)


def test_the_dot_product_attention_call_matches_the_softmax(inputs):
    q, k, v, valid = inputs
    out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                       jnp.asarray(valid), "xla")
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, valid), atol=2e-5)


def test_the_layer_gives_one_output_whatever_computes_it(inputs):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 128, 32)), jnp.float32)
    mask = jnp.asarray(inputs[3])[:, None, None, :]
    xla = layers.Attention(num_heads=2)
    splash = layers.Attention(num_heads=2, implementation="splash")
    variables = nn.unbox(xla.init(jax.random.key(0), x, mask=mask))
    np.testing.assert_allclose(np.asarray(splash.apply(variables, x, mask=mask)),
                               np.asarray(xla.apply(variables, x, mask=mask)), atol=2e-5)
    # Gradients flow through the kernel's own backward.
    grads = [jax.grad(lambda p, m=m: m.apply(p, x, mask=mask).sum())(variables)
             for m in (xla, splash)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


def test_other_masks_are_refused_by_the_fused_kernels():
    q = jnp.zeros((1, 128, 2, 16))
    with pytest.raises(ValueError, match="key-padding masks"):
        layers.fused_attention(q, q, q, jnp.ones((1, 1, 128, 128), bool), "splash")
