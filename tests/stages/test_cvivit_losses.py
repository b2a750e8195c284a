"""Perceptual (frozen LPIPS) and adversarial parts of the tokenizer's training step."""

import io
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from phenaki_jax.config import ConfigError, validation
from phenaki_jax.models import discriminator as disc_lib
from phenaki_jax.models import perceptual
from phenaki_jax.stages.cvivit import CViViTStage


@pytest.fixture(scope="module")
def lpips():
    return perceptual.Perceptual("alexnet")


def test_lpips_zero_for_identical_and_grows_with_noise(lpips):
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    small = x + 0.05 * jax.random.normal(jax.random.key(1), x.shape)
    large = x + 0.5 * jax.random.normal(jax.random.key(1), x.shape)
    d0, d1, d2 = (np.asarray(lpips(x, y)) for y in (x, small, large))
    np.testing.assert_allclose(d0, 0.0, atol=1e-6)
    assert (d1 > 0).all() and (d2 > d1).all()


def test_lpips_weights_are_frozen_constants(lpips):
    """Gradients reach the images but the LPIPS network gets none (it is not a parameter)."""
    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
    y = jnp.zeros_like(x)
    g_img = jax.grad(lambda a: lpips(a, y).sum())(x)
    assert float(jnp.abs(g_img).sum()) > 0

    def through_params(params):
        old = lpips.params
        lpips.params = params
        try:
            return lpips(x, y).sum()
        finally:
            lpips.params = old

    g_params = jax.grad(through_params)(lpips.params)
    assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree.leaves(g_params))


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    payload = pickle.dumps({"w": Evil()})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        perceptual._ArraysOnlyUnpickler(io.BytesIO(payload)).load()
    ok = pickle.dumps({"w": np.arange(3.0)})
    out = perceptual._ArraysOnlyUnpickler(io.BytesIO(ok)).load()
    np.testing.assert_array_equal(out["w"], np.arange(3.0))


def test_lecam_penalty_matches_formula():
    real = jnp.array([1.0, -2.0, 3.0])
    fake = jnp.array([-1.0, 0.5])
    got = disc_lib.lecam_penalty(real, fake, jnp.array(0.2), jnp.array(-0.4))
    want = np.mean(np.maximum(np.array([1.0, -2, 3]) + 0.4, 0) ** 2) + np.mean(
        np.maximum(0.2 - np.array([-1.0, 0.5]), 0) ** 2)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def small_gan_config(num_frames: int, adversarial_start_step: int = 0,
                     perceptual_weight: float = 0.1):
    """A narrow tiny tokenizer with the adversarial (and perceptual) loss on, batch 2."""
    c = load_config("cvivit")
    c.loss.adversarial_weight = 0.1
    c.loss.perceptual_weight = perceptual_weight
    c.loss.adversarial_start_step = adversarial_start_step
    c.warmup_steps = 0  # the first step must move the parameters
    c.discriminator.channels = 8
    c.batch_size = 2
    c.data.num_frames = num_frames
    c.model.width, c.model.mlp_dim = 32, 64
    c.data.image_batch_size = 0  # the batches below are hand-made; one test turns it on
    return c


def test_gan_step_trains_both_players_with_perceptual_loss():
    c = small_gan_config(num_frames=3)  # the smallest video: first frame + one tubelet
    validation.validate(c, 1)
    stage = CViViTStage(c)
    state = nn.unbox(stage.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    batch = {"frames": jnp.asarray(rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)),
             "is_image": jnp.zeros((2,), jnp.int32)}
    new, metrics = jax.jit(stage.train_step)(state, batch)
    for k in ("g_loss", "d_loss", "perceptual", "loss"):
        assert np.isfinite(float(metrics[k])), k
    changed = lambda a, b: any(float(jnp.abs(x - y).max()) > 0
                               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    assert changed(new.aux["disc_params"], state.aux["disc_params"])
    assert changed(new.params, state.params)
    assert float(new.aux["lecam_real"]) != 0.0


def test_discriminator_waits_for_its_start_step():
    c = small_gan_config(num_frames=3, adversarial_start_step=100, perceptual_weight=0.0)
    stage = CViViTStage(c)
    state = nn.unbox(stage.init(jax.random.key(0)))
    batch = {"frames": jnp.zeros((2, 3, 32, 32, 3), jnp.uint8),
             "is_image": jnp.zeros((2,), jnp.int32)}
    new, _ = jax.jit(stage.train_step)(state, batch)
    for a, b in zip(jax.tree.leaves(new.aux["disc_params"]),
                    jax.tree.leaves(state.aux["disc_params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_images_padding_frames_change_nothing_in_a_training_step():
    """An image is frame 0 and zero padding: its padding tokens must not reach the VQ loss, the
    usage statistics, the dead-code restart, the discriminator or the eval's code counts, so
    the step is the same whatever the padding holds."""
    c = small_gan_config(num_frames=5)  # two tubelets: an image has two padding token frames
    c.quantizer.restart_every_steps = 1  # codes unused in step 0 restart at once
    validation.validate(c, 1)
    stage = CViViTStage(c)
    state = nn.unbox(stage.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 5, 32, 32, 3), dtype=np.uint8)
    is_image = jnp.array([1, 0], jnp.int32)
    zero_padded = frames.copy()
    zero_padded[0, 1:] = 0
    step = jax.jit(stage.train_step)
    evaluate = jax.jit(stage.eval_step)
    outs = [(step(state, {"frames": jnp.asarray(f), "is_image": is_image}),
             evaluate(state, {"frames": jnp.asarray(f), "is_image": is_image}))
            for f in (zero_padded, frames)]
    (new_a, metrics_a), eval_a = outs[0]
    (new_b, metrics_b), eval_b = outs[1]
    assert float(metrics_a["restarted_codes"]) > 0  # the unused codes restarted
    for a, b in zip(jax.tree.leaves((new_a, metrics_a, eval_a)),
                    jax.tree.leaves((new_b, metrics_b, eval_b)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # 32x32 frames in 8x8 patches: 16 tokens per token frame; the image has one real token
    # frame, the video three.
    assert float(eval_a["code_counts"].sum()) == 16 * (1 + 3)


def test_dead_codes_restart_until_the_stop_fraction_and_never_after():
    """`quantizer.restart_stop_fraction`: with 10 steps and 0.5, step 4 (the fifth) restarts
    the codes the batch left unused; from step 5 on the step equals one with restarts off."""
    rng = np.random.default_rng(2)
    batch = {"frames": jnp.asarray(rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)),
             "is_image": jnp.zeros((2,), jnp.int32)}
    results = {}
    for every, at in ((1, 4), (1, 5), (0, 5)):
        c = small_gan_config(num_frames=3, perceptual_weight=0.0)
        c.loss.adversarial_weight = 0.0
        c.total_steps = 10
        c.quantizer.restart_every_steps = every
        c.quantizer.restart_stop_fraction = 0.5
        validation.validate(c, 1)
        stage = CViViTStage(c)
        state = nn.unbox(stage.init(jax.random.key(0))).replace(step=jnp.asarray(at, jnp.int32))
        results[every, at] = jax.jit(stage.train_step)(state, batch)
    assert float(results[1, 4][1]["restarted_codes"]) > 0
    assert float(results[1, 5][1]["restarted_codes"]) == 0
    for a, b in zip(jax.tree.leaves(results[1, 5][0]), jax.tree.leaves(results[0, 5][0]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_image_stream_trains_exactly_as_images_padded_into_the_batch():
    """`data.image_batch_size`: images beside the batch, each coded as a one-frame clip. The
    reference is the other path: the same images padded to T frames inside the batch, whose
    padding the test above shows changes nothing. With causal layers the two must give the
    same step, discriminator and all, at a third of the tokens per image here."""
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, (2, 5, 32, 32, 3), dtype=np.uint8)
    images = rng.integers(0, 256, (2, 1, 32, 32, 3), dtype=np.uint8)
    results = []
    for stream in (True, False):
        c = small_gan_config(num_frames=5, perceptual_weight=0.0)
        c.quantizer.restart_every_steps = 100  # not a restart step: its draws follow layout
        if stream:
            c.data.image_batch_size = 2
            batch = {"frames": videos, "is_image": np.zeros((2,), np.int32),
                     "image_frames": images}
        else:
            c.batch_size = 4
            padded = np.concatenate([images, np.zeros((2, 4, 32, 32, 3), np.uint8)], axis=1)
            batch = {"frames": np.concatenate([videos, padded]),
                     "is_image": np.array([0, 0, 1, 1], np.int32)}
        validation.validate(c, 1)
        stage = CViViTStage(c)
        assert set(stage.example_batch()) == set(batch)
        state = nn.unbox(stage.init(jax.random.key(0)))
        new, metrics = jax.jit(stage.train_step)(state, jax.tree.map(jnp.asarray, batch))
        keep = ("loss", "l2", "vq_loss", "g_loss", "d_loss", "perplexity", "batch_usage",
                "grad_norm")
        results.append((new, {k: metrics[k] for k in keep}))
    (new_s, metrics_s), (new_p, metrics_p) = results
    assert float(metrics_s["d_loss"]) > 0 and float(metrics_s["g_loss"]) > 0
    close = lambda a, b, **tol: [np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)
                                 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                 strict=True)]
    close(metrics_s, metrics_p, rtol=1e-5)
    # The gradients: Adam's moments after its first step are (1 - b) g and (1 - b2) g^2.
    close((new_s.opt_state, new_s.model_state, new_s.aux["disc_opt_state"]),
          (new_p.opt_state, new_p.model_state, new_p.aux["disc_opt_state"]),
          rtol=1e-3, atol=1e-9)
    # The parameters: Adam's first step moves each by about the learning rate times the sign
    # of its gradient, whatever the gradient's size, so a near-zero gradient whose float noise
    # flips its sign moves a parameter the other way. Compared where the gradient is clearly
    # non-zero with one sign in both runs, or exactly zero in both (unused codes), which must
    # be most parameters.
    for params, states in (((new_s.params, new_p.params), (new_s.opt_state, new_p.opt_state)),
                           ((new_s.aux["disc_params"], new_p.aux["disc_params"]),
                            (new_s.aux["disc_opt_state"], new_p.aux["disc_opt_state"]))):
        sure = total = 0
        for p_s, p_p, g_s, g_p in zip(*map(jax.tree.leaves, params),
                                      *map(jax.tree.leaves, map(_adam_first_moment, states)),
                                      strict=True):
            g_s, g_p = np.asarray(g_s), np.asarray(g_p)
            clear = (((np.abs(g_s) > 1e-6) & (np.sign(g_s) == np.sign(g_p)))
                     | ((g_s == 0) & (g_p == 0)))
            np.testing.assert_allclose(np.asarray(p_s)[clear], np.asarray(p_p)[clear],
                                       rtol=1e-5, atol=1e-6)
            sure, total = sure + int(clear.sum()), total + clear.size
        assert sure > 0.9 * total, (sure, total)
    close((new_s.aux["lecam_real"], new_s.aux["lecam_fake"]),
          (new_p.aux["lecam_real"], new_p.aux["lecam_fake"]), rtol=1e-5)


def _adam_first_moment(opt_state):
    """Adam's `mu` (a tree like the parameters) inside an optax chain's state."""
    if hasattr(opt_state, "mu"):
        return opt_state.mu
    if isinstance(opt_state, tuple):
        for part in opt_state:
            found = _adam_first_moment(part)
            if found is not None:
                return found
    return None


def test_the_i3d_loss_trains_the_tokenizer_and_stays_out_of_its_checkpoints():
    c = small_gan_config(num_frames=9, perceptual_weight=0.0)
    c.loss.adversarial_weight = 0.0
    c.loss.video_perceptual_weight = 0.1
    c.batch_size = 1  # I3D runs at 224 x 224 whatever the clip's size
    validation.validate(c, 1)
    stage = CViViTStage(c)
    assert stage.detached_aux() == ("i3d",)
    state = nn.unbox(stage.init(jax.random.key(0)))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    state = stage.prepare_new_state(state, None, shardings)
    assert float(jnp.abs(state.aux["i3d"]["params/Conv3d_1a_7x7/Conv_0/kernel"]).max()) > 0
    assert "i3d" not in stage.savable(state).aux
    rng = np.random.default_rng(0)
    batch = {"frames": jnp.asarray(rng.integers(0, 256, (1, 9, 32, 32, 3), dtype=np.uint8)),
             "is_image": jnp.zeros((1,), jnp.int32)}
    new, metrics = jax.jit(stage.train_step)(state, batch)
    assert float(metrics["video_perceptual"]) > 0 and np.isfinite(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(new.aux["i3d"]), jax.tree.leaves(state.aux["i3d"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen
    c.data.num_frames = 3
    with pytest.raises(ConfigError, match="at least 9 frames"):
        validation.validate(c, 1)
