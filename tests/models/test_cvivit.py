"""C-ViViT: patch layout, causality, the quantizer, dead-code restart (numpy references)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from phenaki_jax.models import layers, quantizers
from phenaki_jax.models.cvivit import CViViT, token_grid


@pytest.fixture(scope="module")
def tiny():
    c = load_config("cvivit")
    c.model.patch_size = 4  # finer than tiny's default: 6x8x8 tokens exercise more positions
    model = CViViT.from_config(c)
    x = jax.random.uniform(jax.random.key(1), (2, 11, 32, 32, 3), minval=-1, maxval=1)
    variables = model.init(jax.random.key(0), x)
    return c, model, variables, x


def numpy_patches(video, p, pt):
    """Independent reference: token (j, a, b) holds frames of its tubelet, pixels row-major."""
    b, t, h, w, c = video.shape
    first = np.zeros((b, 1, h // p, w // p, p * p * c))
    rest = np.zeros((b, (t - 1) // pt, h // p, w // p, pt * p * p * c))
    for i in range(h // p):
        for j in range(w // p):
            first[:, 0, i, j] = video[:, 0, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(b, -1)
            for k in range((t - 1) // pt):
                tube = video[:, 1 + k * pt:1 + (k + 1) * pt, i * p:(i + 1) * p,
                             j * p:(j + 1) * p]
                rest[:, k, i, j] = tube.reshape(b, -1)
    return first, rest


def test_patch_layout_matches_reference_and_roundtrips(tiny):
    c, model, variables, x = tiny
    x = np.asarray(x)
    first, rest = model.apply(variables, jnp.asarray(x), method=model._patchify)
    ref_first, ref_rest = numpy_patches(x, 4, 2)
    np.testing.assert_array_equal(np.asarray(first), ref_first.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(rest), ref_rest.astype(np.float32))
    back = model.apply(variables, first, rest, method=model._unpatchify)
    np.testing.assert_array_equal(np.asarray(back), x)


def test_token_grid_of_paper_clip():
    assert token_grid(11, 128, 8) == (6, 16, 16)
    assert token_grid(1, 128, 8) == (1, 16, 16)


def test_encoder_is_causal(tiny):
    """Tokens of the first 1 + 2j frames equal the first 1 + j token frames of the clip, and the
    future cannot change the past: perturbing later frames leaves earlier tokens alone."""
    _, model, variables, x = tiny
    full = np.asarray(model.apply(variables, x, method=model.tokenize))
    assert full.shape == (2, 6, 8, 8)
    for j in range(6):
        prefix = np.asarray(model.apply(variables, x[:, :1 + 2 * j], method=model.tokenize))
        np.testing.assert_array_equal(prefix, full[:, :1 + j])
    changed = x.at[:, 5:].set(-x[:, 5:])  # frames 5.. belong to token frames >= 3
    ids = np.asarray(model.apply(variables, changed, method=model.tokenize))
    np.testing.assert_array_equal(ids[:, :3], full[:, :3])
    # ... and the encoder output really depends on the changed frames (the test can fail).
    assert (ids[:, 3:] != full[:, 3:]).any()


@pytest.mark.parametrize("radius", [0, 1])
def test_encoder_window_bounds_what_a_token_sees(tiny, radius):
    """With `model.encoder_window = r` every encoder layer attends r patches around (and r token
    frames back, causally): perturbing one tubelet moves the encoder output exactly within the
    receptive field those layers compose to (numpy reference), and nowhere else."""
    c, _, _, x = tiny
    c = c.copy_and_resolve_references()
    c.model.encoder_window = radius
    model = CViViT.from_config(c)
    variables = model.init(jax.random.key(0), x)
    t0, a0, b0 = 2, 3, 5  # the perturbed token: frames 3-4, rows 12-15, columns 20-23
    changed = x.at[:, 3:5, 12:16, 20:24].set(-x[:, 3:5, 12:16, 20:24])
    z = np.asarray(model.apply(variables, x, method=model.encode)["z"])
    z2 = np.asarray(model.apply(variables, changed, method=model.encode)["z"])
    moved = np.abs(z2 - z).max(axis=(0, 4)) > 1e-6  # [t, h, w]
    ts, hs, ws = np.meshgrid(np.arange(6), np.arange(8), np.arange(8), indexing="ij")
    reach_s = c.model.spatial_layers * radius
    reach_t = c.model.temporal_layers * radius
    expected = ((ts == t0) | ((ts > t0) & (ts - t0 <= reach_t))) \
        & (np.abs(hs - a0) <= reach_s) & (np.abs(ws - b0) <= reach_s)
    np.testing.assert_array_equal(moved, expected)


def test_self_only_attention_is_the_value_path():
    """An encoder window of 0 runs attention without logits: the output must be NumPy's
    x Wv Wo, and output and gradients must equal the masked attention with only the diagonal
    allowed, whose query and key kernels get no gradient (rounding noise only)."""
    x = jax.random.normal(jax.random.key(3), (2, 3, 5, 16))
    fast = layers.Attention(num_heads=2, axis=2, self_only=True)
    slow = layers.Attention(num_heads=2, axis=2)
    variables = slow.init(jax.random.key(4), x)
    assert jax.tree.structure(fast.init(jax.random.key(4), x)) == jax.tree.structure(variables)
    params = nn.unbox(variables)["params"]
    wv = np.asarray(params["value"]["kernel"]).reshape(16, 16)
    wo = np.asarray(params["out"]["kernel"]).reshape(16, 16)
    ref = np.asarray(x, np.float64) @ wv.astype(np.float64) @ wo.astype(np.float64)
    diagonal = jnp.eye(5, dtype=bool)
    y_fast = fast.apply(variables, x)
    np.testing.assert_allclose(np.asarray(y_fast), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(slow.apply(variables, x, mask=diagonal)), ref,
                               rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(5), x.shape)

    def loss(v, model, **kw):
        return jnp.sum(model.apply(v, x, **kw) * weights)

    g_fast = nn.unbox(jax.grad(loss)(variables, fast))["params"]
    g_slow = nn.unbox(jax.grad(loss)(variables, slow, mask=diagonal))["params"]
    for name in ("value", "out"):
        np.testing.assert_allclose(np.asarray(g_fast[name]["kernel"]),
                                   np.asarray(g_slow[name]["kernel"]), rtol=1e-4, atol=1e-5)
    for name in ("query", "key"):
        np.testing.assert_array_equal(np.asarray(g_fast[name]["kernel"]), 0.0)
        np.testing.assert_allclose(np.asarray(g_slow[name]["kernel"]), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="self_only"):
        fast.apply(variables, x, mask=diagonal)


def test_decoder_is_causal(tiny):
    _, model, variables, x = tiny
    ids = model.apply(variables, x, method=model.tokenize)
    full = np.asarray(model.apply(variables, ids, method=model.decode_ids))
    part = np.asarray(model.apply(variables, ids[:, :3], method=model.decode_ids))
    assert full.shape == (2, 11, 32, 32, 3) and part.shape == (2, 5, 32, 32, 3)
    np.testing.assert_allclose(part, full[:, :5], atol=1e-5)


def test_pixel_head_keeps_the_decoder_causal_and_lays_features_out_as_pixels(tiny):
    """With `pixel_head_channels` the head's per-pixel features follow the patch layout of the
    numpy reference, and a prefix of the tokens still decodes to a prefix of the frames."""
    c, _, _, x = tiny
    c = c.copy_and_resolve_references()
    c.model.pixel_head_channels = 4
    c.data.resolution = 16  # 4x4 patches: small enough to compile fast, and still a grid
    x = x[:, :5, :16, :16]
    model = CViViT.from_config(c)
    variables = model.init(jax.random.key(0), x)
    assert nn.unbox(variables)["params"]["to_pixels"]["kernel"].shape == (3, 3, 4, 3)
    feats = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 16, 16, 4)))
    ref_first, ref_rest = numpy_patches(feats, 4, 2)
    back = model.apply(variables, jnp.asarray(ref_first, jnp.float32),
                       jnp.asarray(ref_rest, jnp.float32), method=model._unpatchify)
    np.testing.assert_allclose(np.asarray(back), feats, rtol=1e-6)
    ids = model.apply(variables, x, method=model.tokenize)
    full = np.asarray(model.apply(variables, ids, method=model.decode_ids))
    part = np.asarray(model.apply(variables, ids[:, :2], method=model.decode_ids))
    assert full.shape == (2, 5, 16, 16, 3)
    np.testing.assert_allclose(part, full[:, :3], atol=1e-5)


@pytest.fixture(scope="module")
def predictive(tiny):
    c, _, _, x = tiny
    c = c.copy_and_resolve_references()
    c.data.resolution = 16  # 4x4 patches: small enough to compile fast, and still a grid
    x = x[:, :7, :16, :16]
    plain = CViViT.from_config(c)
    c.model.temporal_residual = True
    model = CViViT.from_config(c)
    variables = model.init(jax.random.key(0), x)
    return plain, model, variables, x


def test_temporal_residual_decodes_onto_the_previous_reconstructed_frame(predictive):
    """Against a numpy loop over the frames of the same head's output: a later token frame's
    frames are the head's plus the reconstruction's last frame before them, frame 0 and images
    are the head's, and a prefix of the tokens decodes to a prefix of the frames."""
    plain, model, variables, x = predictive
    ids = model.apply(variables, x, method=model.tokenize)
    head = np.asarray(plain.apply(variables, ids, method=plain.decode_ids), np.float64)
    ref = head.copy()
    for i in range(1, 7):
        ref[:, i] += ref[:, 2 * ((i - 1) // 2)]  # the last frame of the token frame before
    got = np.asarray(model.apply(variables, ids, method=model.decode_ids))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(ref[:, 3:] - head[:, 3:]).max() > 0.1  # the additions are not negligible
    part = np.asarray(model.apply(variables, ids[:, :2], method=model.decode_ids))
    np.testing.assert_allclose(part, got[:, :3], atol=1e-5)
    image = np.asarray(model.apply(variables, ids[:, :1], method=model.decode_ids))
    np.testing.assert_allclose(image, head[:, :1], atol=1e-5)


def test_temporal_residual_codes_against_its_own_reconstruction(predictive):
    """Closed loop: the codes are those the encoder gives when shown the last frames of the
    clip's own reconstruction from those codes; other bases give other codes (the encoder
    reads them); and a prefix of the frames still codes as within the whole clip."""
    _, model, variables, x = predictive
    ids = np.asarray(model.apply(variables, x, method=model.tokenize))
    recon = np.asarray(model.apply(variables, jnp.asarray(ids), method=model.decode_ids))
    bases = recon[:, [0, 2, 4]]  # the last frames of token frames 0, 1 and 2
    z = model.apply(variables, x, jnp.asarray(bases), method=model.latents)
    again = model.apply(variables, z, method=lambda m, z: m.quantizer(z)["ids"])
    np.testing.assert_array_equal(np.asarray(again), ids)
    z_real = model.apply(variables, x, x[:, [0, 2, 4]], method=model.latents)  # open loop
    assert np.abs(np.asarray(z_real) - np.asarray(z))[:, 1:].max() > 1e-3
    np.testing.assert_allclose(np.asarray(z_real)[:, 0], np.asarray(z)[:, 0], atol=1e-6)
    prefix = np.asarray(model.apply(variables, x[:, :5], method=model.tokenize))
    np.testing.assert_array_equal(prefix, ids[:, :3])


def test_image_is_a_one_frame_video(tiny):
    _, model, variables, x = tiny
    image_ids = np.asarray(model.apply(variables, x[:, :1], method=model.tokenize))
    video_ids = np.asarray(model.apply(variables, x, method=model.tokenize))
    np.testing.assert_array_equal(image_ids[:, 0], video_ids[:, 0])


def test_quantizer_picks_nearest_normalised_code():
    vq = quantizers.FactorizedVQ(codebook_size=64, code_dim=8)
    z = jax.random.normal(jax.random.key(3), (5, 7, 8))
    variables = vq.init(jax.random.key(4), z)
    out = vq.apply(variables, z)
    cb = np.asarray(nn.unbox(variables)["params"]["codebook"], np.float64)
    cb /= np.linalg.norm(cb, axis=-1, keepdims=True)
    zn = np.asarray(z, np.float64)
    zn /= np.linalg.norm(zn, axis=-1, keepdims=True)
    dist = ((zn[..., None, :] - cb) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(out["ids"]), dist.argmin(-1))
    np.testing.assert_allclose(np.asarray(out["quantized"]), cb[dist.argmin(-1)], atol=1e-5)
    # Straight-through: d quantized / d z is the identity on the normalised input.
    g = jax.grad(lambda zz: vq.apply(variables, zz)["quantized"].sum())(zn.astype(np.float32))
    assert np.abs(np.asarray(g)).sum() > 0


@pytest.mark.parametrize("shape", [(7, 1024), (2, 3, 5, 17), (4, 1)])
def test_argmax_last_is_numpys_argmax_ties_included(shape):
    """The quantizer's and the sampler's argmax: numpy's index of the first maximum, also on
    ties (few distinct values force many), rows of -inf and all-equal rows."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, shape).astype(np.float32)
    x.reshape(-1, shape[-1])[0] = -np.inf
    x.reshape(-1, shape[-1])[-1] = 2.0
    got = np.asarray(jax.jit(layers.argmax_last)(jnp.asarray(x)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.argmax(-1))
    y = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layers.argmax_last(jnp.asarray(y))), y.argmax(-1))


def test_quantizer_loss_is_codebook_plus_weighted_commitment():
    vq = quantizers.FactorizedVQ(codebook_size=16, code_dim=4, commitment_weight=0.25)
    z = jax.random.normal(jax.random.key(5), (10, 4))
    variables = vq.init(jax.random.key(6), z)
    out = vq.apply(variables, z)
    zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=-1, keepdims=True)
    q = np.asarray(out["quantized"])
    mse = ((zn - q) ** 2).mean()
    np.testing.assert_allclose(float(out["loss"]), 1.25 * mse, rtol=1e-4)


def test_usage_statistics_are_an_ema_of_assignment_shares():
    vq = quantizers.FactorizedVQ(codebook_size=4, code_dim=2, usage_decay=0.5)
    z = jnp.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    variables = vq.init(jax.random.key(0), z)
    out, new = vq.apply(variables, z, update_stats=True, mutable=["vq_stats"])
    share = np.bincount(np.asarray(out["ids"]), minlength=4) / 4
    np.testing.assert_allclose(np.asarray(new["vq_stats"]["usage"]), 0.5 * share,
                               atol=1e-6)


def test_dead_code_restart_replaces_only_dead_codes_from_badly_fit_tokens():
    k, d = 8, 4
    codebook = jax.random.normal(jax.random.key(0), (k, d))
    usage = jnp.array([0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0])
    candidates = quantizers.l2_normalize(jax.random.normal(jax.random.key(1), (32, d)))
    errors = jnp.full((32,), 1e-9).at[7].set(1.0).at[9].set(1.0)  # 7 and 9 are badly fit
    new_cb, new_usage, n = quantizers.restart_dead_codes(codebook, usage, candidates, errors,
                                                         jax.random.key(2), threshold=0.5)
    assert int(n) == 5  # usage below 0.5 / 8
    np.testing.assert_array_equal(np.asarray(new_cb[:3]), np.asarray(codebook[:3]))
    fresh = np.asarray(quantizers.l2_normalize(new_cb[3:]))
    match = fresh @ np.asarray(candidates).T  # [5, 32]
    picked = match.argmax(axis=1)
    assert (match.max(axis=1) > 0.99).all()
    assert len(set(picked)) == 5  # distinct candidates, not five copies of one
    assert set(picked[:2]) == {7, 9}  # the badly fit ones are taken first
    np.testing.assert_allclose(np.asarray(new_usage[3:]), 1 / k)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(new_cb), axis=-1),
                               np.linalg.norm(np.asarray(codebook), axis=-1), rtol=1e-5)


def test_masked_tokens_are_left_out_of_loss_usage_and_restart_candidates():
    """Reference: the same quantizer applied to the real tokens alone."""
    vq = quantizers.FactorizedVQ(codebook_size=8, code_dim=4, usage_decay=0.5)
    z = jax.random.normal(jax.random.key(7), (2, 6, 4))
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.float32)
    variables = vq.init(jax.random.key(8), z)
    out, new = vq.apply(variables, z, update_stats=True, mask=mask, mutable=["vq_stats"])
    real = jnp.concatenate([z[0, :4], z[1]])
    ref, ref_new = vq.apply(variables, real, update_stats=True, mutable=["vq_stats"])
    for k in ("loss", "perplexity", "batch_usage"):
        np.testing.assert_allclose(float(out[k]), float(ref[k]), rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(new["vq_stats"]["usage"]),
                               np.asarray(ref_new["vq_stats"]["usage"]), rtol=1e-5)
    errors = np.asarray(out["errors"])
    np.testing.assert_array_equal(errors[0, 4:], 0.0)
    np.testing.assert_allclose(np.concatenate([errors[0, :4], errors[1]]),
                               np.asarray(ref["errors"]), rtol=1e-5)


def test_restart_never_draws_a_candidate_without_error():
    k, d = 6, 4
    codebook = jax.random.normal(jax.random.key(0), (k, d))
    usage = jnp.array([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])  # four dead codes
    candidates = quantizers.l2_normalize(jax.random.normal(jax.random.key(1), (16, d)))
    errors = jnp.zeros((16,)).at[3].set(0.2).at[11].set(1e-6)  # only two drawable
    new_cb, _, n = quantizers.restart_dead_codes(codebook, usage, candidates, errors,
                                                 jax.random.key(2), threshold=0.5)
    assert int(n) == 4
    match = np.asarray(quantizers.l2_normalize(new_cb[2:])) @ np.asarray(candidates).T
    assert (match.max(axis=1) > 0.99).all()
    assert set(match.argmax(axis=1)) == {3, 11}  # each twice, never a zero-error candidate


def test_paper_parameter_count_is_about_50m():
    c = load_config("cvivit", "variant=paper")
    model = CViViT.from_config(c)
    x = jax.ShapeDtypeStruct((1, 11, 128, 128, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nn.unbox(shapes["params"])))
    d, mlp, layers, p = 512, 2048, 16, 8
    per_layer = 4 * d * d + 2 * d * mlp  # attention + MLP matrices, independent estimate
    head = d * mlp + mlp * (p * p * 3 + 2 * p * p * 3)  # decoder's pixel head
    estimate = layers * per_layer + head
    assert abs(n - estimate) / estimate < 0.05
    assert 45e6 < n < 55e6


@pytest.mark.parametrize("num_frames", [1, 5, 11])
def test_token_frame_weights_keep_an_images_first_token_frame_only(num_frames):
    from phenaki_jax.stages.cvivit import token_frame_weights

    batch = {"frames": jnp.zeros((3, num_frames, 8, 8, 3), jnp.uint8),
             "is_image": jnp.array([1, 0, 1], jnp.int32)}
    t = 1 + (num_frames - 1) // 2
    want = np.ones((3, t))
    want[[0, 2], 1:] = 0  # images: token frame 0 holds frame 0, the rest is padding
    np.testing.assert_array_equal(np.asarray(token_frame_weights(batch, 2)), want)


def test_an_image_coded_beside_the_videos_equals_the_image_as_a_one_frame_clip():
    """`images=`: one-frame clips quantized in one set with the videos' real tokens. Reference:
    each coded alone by the ordinary path, the quantizer's loss and usage on the union of
    their real tokens."""
    c = load_config("cvivit")
    c.data.num_frames = 5
    c.model.width, c.model.mlp_dim, c.model.codebook_size = 32, 64, 16
    model = CViViT.from_config(c)
    rng = np.random.default_rng(3)
    videos = jnp.asarray(rng.uniform(-1, 1, (2, 5, 32, 32, 3)), jnp.float32)
    images = jnp.asarray(rng.uniform(-1, 1, (3, 1, 32, 32, 3)), jnp.float32)
    mask = jnp.array([[1, 1, 1], [1, 0, 0]], jnp.float32)  # the second clip is an image
    variables = model.init(jax.random.key(0), videos)
    both, stats = model.apply(variables, videos, update_stats=True, token_mask=mask,
                              images=images, mutable=["vq_stats"])
    vid = model.apply(variables, videos, token_mask=mask)
    img = model.apply(variables, images)
    np.testing.assert_array_equal(np.asarray(both["ids"]), np.asarray(vid["ids"]))
    np.testing.assert_array_equal(np.asarray(both["image_ids"]), np.asarray(img["ids"]))
    np.testing.assert_allclose(np.asarray(both["recon"]), np.asarray(vid["recon"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(both["image_recon"]), np.asarray(img["recon"]),
                               atol=1e-5)
    # The quantizer alone on exactly the real tokens: video 0 all 3 token frames, video 1
    # token frame 0, every image token.
    d = c.model.code_dim
    zv = model.apply(variables, videos, method=CViViT.latents)
    zi = model.apply(variables, images, method=CViViT.latents)
    real = jnp.concatenate([zv[0].reshape(-1, d), zv[1, :1].reshape(-1, d), zi.reshape(-1, d)])
    vq = quantizers.FactorizedVQ(c.model.codebook_size, d, c.quantizer.commitment_weight,
                                 c.quantizer.usage_decay)
    ref, ref_stats = vq.apply({"params": variables["params"]["quantizer"],
                               "vq_stats": variables["vq_stats"]["quantizer"]}, real,
                              update_stats=True, mutable=["vq_stats"])
    for k in ("loss", "perplexity", "batch_usage"):
        np.testing.assert_allclose(float(both[k]), float(ref[k]), rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(stats["vq_stats"]["quantizer"]["usage"]),
                               np.asarray(ref_stats["vq_stats"]["usage"]), rtol=1e-5)
    errors = np.asarray(both["errors"])
    np.testing.assert_allclose(np.sort(errors[errors > 0]), np.sort(np.asarray(ref["errors"])),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="one-frame clips"):
        model.apply(variables, videos, images=videos)
