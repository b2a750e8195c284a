"""Scanned layers compute what unrolled layers compute: the same parameters, stacked on a
leading axis, give the same output and gradients, under every remat policy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phenaki_jax.models import layers


@pytest.mark.parametrize("remat", ["none", "full", "save_dots"])
def test_scanned_layers_equal_unrolled_layers(remat):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 16)), jnp.float32)
    ctx = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 16)), jnp.float32)
    ctx_mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)[:, None, None, :]
    kw = dict(num_layers=3, num_heads=2, mlp_dim=32, cross_attention=True, remat=remat)
    unrolled = layers.Transformer(**kw)
    scanned = layers.Transformer(**kw, scan=True)
    p = nn.unbox(unrolled.init(jax.random.key(0), x, None, ctx, ctx_mask))["params"]
    stacked = {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs),
                                      *[p[f"block_{i}"] for i in range(3)])}
    # The scanned module's own parameters have exactly this layout.
    own = nn.unbox(scanned.init(jax.random.key(0), x, None, ctx, ctx_mask))["params"]
    assert jax.tree.structure(own) == jax.tree.structure(stacked)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(own),
                                                  jax.tree.leaves(stacked), strict=True))

    def loss(module, params):
        return jnp.sum(module.apply({"params": params}, x, None, ctx, ctx_mask) ** 2)

    np.testing.assert_allclose(loss(scanned, stacked), loss(unrolled, p), rtol=1e-5)
    g_unrolled = jax.grad(lambda q: loss(unrolled, q))(p)
    g_scanned = jax.grad(lambda q: loss(scanned, q))(stacked)
    for i in range(3):
        for a, b in zip(jax.tree.leaves(g_unrolled[f"block_{i}"]),
                        jax.tree.leaves(jax.tree.map(lambda t, i=i: t[i], g_scanned["blocks"])),
                        strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


def test_scanned_parameters_carry_a_layers_axis():
    x = jnp.zeros((1, 4, 8))
    boxed = layers.Transformer(2, 2, 16, scan=True).init(jax.random.key(0), x)["params"]
    kernel = boxed["blocks"]["mlp"]["wi"]["kernel"]
    assert kernel.names == ("layers", "embed", "mlp")
