"""The training state's guard against non-finite steps: a step whose new state is not finite
keeps the old state, leaf for leaf, inside a compiled step."""

import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.stages import state as state_lib


def _trees(bad_leaf: str | None):
    rng = np.random.default_rng(0)
    old = {"w": rng.standard_normal((3, 4)).astype(np.float32),
           "b": rng.standard_normal((4,)).astype(np.float32),
           "step": np.int32(7), "nested": {"m": rng.standard_normal((2, 2)).astype(np.float32)}}
    new = jax.tree.map(lambda x: x + 1, old)
    if bad_leaf == "w":
        new["w"][1, 2] = np.nan
    elif bad_leaf == "m":
        new["nested"]["m"][0, 0] = np.inf
    return old, new


def test_a_non_finite_leaf_anywhere_keeps_every_old_leaf():
    @jax.jit
    def guarded(old, new):
        return state_lib.select_tree(state_lib.all_finite(new), new, old)

    for bad in (None, "w", "m"):
        old, new = _trees(bad)
        got = guarded(old, new)
        # numpy's verdict on the same trees decides which one the guard must return
        finite = bool(np.all([np.isfinite(x).all() for x in jax.tree.leaves(new)]))
        assert finite == (bad is None)
        want = new if finite else old
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(g), w)
            assert np.asarray(g).dtype == np.asarray(w).dtype


def test_all_finite_ignores_integer_leaves_and_sees_every_float_leaf():
    assert bool(state_lib.all_finite({"i": jnp.arange(3), "f": jnp.ones(2)}))
    assert not bool(state_lib.all_finite({"i": jnp.arange(3), "f": jnp.array([1.0, -jnp.inf])}))
    assert bool(state_lib.all_finite({}))
