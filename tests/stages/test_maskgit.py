"""The masked transformer: masking, the image rule, parallel decoding and guidance, checked
against independent NumPy statements of what each must do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from phenaki_jax import decoding as decode
from phenaki_jax.config import ConfigError, validation
from phenaki_jax.models.maskgit import MaskGIT
from phenaki_jax.stages import losses, masking

GRID = (6, 4, 4)
N, S = 96, 16


def test_masks_respect_images_prefixes_and_counts():
    b = 512
    is_image = jnp.asarray(np.arange(b) % 4 == 0, jnp.int32)
    masked, valid = masking.mask_tokens(jax.random.key(0), GRID, is_image, 0.5)
    masked, valid = np.asarray(masked), np.asarray(valid)
    img = np.asarray(is_image) > 0
    idx = np.arange(N)
    # Images: only token frame 0 exists and only it is ever masked.
    assert (valid[img] == (idx < S)).all()
    assert not masked[img][:, S:].any()
    assert (valid[~img]).all()
    assert (masked <= valid).all()
    # At least one token per example, never all of a clip that keeps a prefix.
    assert (masked.sum(1) >= 1).all()
    # Prefix examples: a whole number of leading token frames is never masked.
    vids = masked[~img]
    first_masked = np.argmax(vids, axis=1)
    prefixed = first_masked >= S
    assert 0.3 < prefixed.mean() < 0.7  # about half of the videos, as asked
    # Masked share follows cos(pi/2 u), u ~ U(0, 1): its mean is 2/pi over eligible tokens.
    plain = vids[~prefixed]
    assert abs(plain.sum(1).mean() / N - 2 / np.pi) < 0.06


def test_frame_masks_hide_exactly_one_whole_token_frame():
    b = 512
    is_image = jnp.asarray(np.arange(b) % 4 == 0, jnp.int32)
    key = jax.random.key(0)
    masked, valid = (np.asarray(x) for x in
                     masking.mask_tokens(key, GRID, is_image, 0.3, 0.5))
    img = np.asarray(is_image) > 0
    assert (valid[img] == (np.arange(N) < S)).all() and not masked[img][:, S:].any()
    per_frame = masked[~img].reshape(-1, GRID[0], S).sum(2)  # masked tokens per token frame
    one_frame = ((per_frame == S).sum(1) == 1) & ((per_frame == 0).sum(1) == GRID[0] - 1)
    # Of the ~70% of videos without a prefix, about half: ~35% of all videos.
    assert 0.25 < one_frame.mean() < 0.45
    hidden = per_frame[one_frame].argmax(1)
    assert set(hidden.tolist()) == set(range(GRID[0]))  # every frame is the hidden one sometimes
    # Off (0), the masks are exactly those drawn without the option.
    off = masking.mask_tokens(key, GRID, is_image, 0.3, 0.0)[0]
    plain = masking.mask_tokens(key, GRID, is_image, 0.3)[0]
    assert (np.asarray(off) == np.asarray(plain)).all()
    assert ((per_frame == S).sum(1) == 1).mean() > ((np.asarray(plain)[~img].reshape(
        -1, GRID[0], S).sum(2) == S).sum(1) == 1).mean() + 0.2


def test_context_token_frames_are_the_tubelets_inside_the_context():
    # Frame f lies in token frame 0 if f == 0, else 1 + (f - 1) // tp; a token frame is
    # context when every frame of it is one of the first c frames.
    for tp in (1, 2, 3):
        num_frames = 1 + 5 * tp  # 1 + k tubelets, as a config must have
        for c in range(num_frames):
            frames_of: dict[int, list[int]] = {}
            for f in range(num_frames):
                frames_of.setdefault(0 if f == 0 else 1 + (f - 1) // tp, []).append(f)
            want = sum(all(f < c for f in fs) for fs in frames_of.values())
            got = int(masking.context_token_frames(jnp.asarray([c]), tp)[0])
            assert got == want, (tp, c)
    # The shapes world's continuation clips switch at frame 5: exactly token frames 0-2.
    from phenaki_jax.data import shapes_world as sw
    assert int(masking.context_token_frames(
        jnp.asarray([sw.CONTINUATION_SPLIT]), 2)[0]) == 3


def test_given_context_frames_are_never_masked_and_change_nothing_else():
    b = 512
    is_image = jnp.asarray(np.arange(b) % 4 == 0, jnp.int32)
    given = np.where(np.arange(b) % 4 == 1, 3, 0)  # every fourth example: a continuation
    key = jax.random.key(0)
    plain_m, plain_v = (np.asarray(x) for x in
                        masking.mask_tokens(key, GRID, is_image, 0.3))
    masked, valid = (np.asarray(x) for x in masking.mask_tokens(
        key, GRID, is_image, 0.3, given_frames=jnp.asarray(given, jnp.int32)))
    ctx = given > 0
    assert (valid == plain_v).all()
    # Context token frames are never masked; something after them always is.
    assert not masked[ctx][:, :3 * S].any()
    assert (masked[ctx][:, 3 * S:].sum(1) >= 1).all()
    # Examples without context get exactly the masks drawn without the option.
    assert (masked[~ctx] == plain_m[~ctx]).all()
    # Zero context everywhere is the plain draw.
    zero = masking.mask_tokens(key, GRID, is_image, 0.3, 0.5,
                                     given_frames=jnp.zeros((b,), jnp.int32))[0]
    assert (np.asarray(zero) == np.asarray(
        masking.mask_tokens(key, GRID, is_image, 0.3, 0.5)[0])).all()
    # With frame masking on, a context example never hides a single whole frame instead.
    fm = np.asarray(masking.mask_tokens(key, GRID, is_image, 0.3, 1.0,
                                              given_frames=jnp.asarray(given, jnp.int32))[0])
    assert not fm[ctx][:, :3 * S].any()


def test_masked_cross_entropy_ignores_unmasked_tokens():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, N, 11)).astype(np.float32)
    ids = rng.integers(0, 11, (2, N))
    masked = rng.random((2, N)) < 0.3
    loss, _ = losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(ids),
                                                 jnp.asarray(masked))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = -(np.take_along_axis(logp, ids[..., None], -1)[..., 0] * masked).sum() / masked.sum()
    assert np.isclose(float(loss), ref, rtol=1e-5)
    grad = jax.grad(lambda x: losses.masked_cross_entropy(
        x, jnp.asarray(ids), jnp.asarray(masked))[0])(jnp.asarray(logits))
    assert np.abs(np.asarray(grad)[~masked]).max() == 0.0
    assert np.abs(np.asarray(grad)[masked]).max() > 0.0
    # Label smoothing e: the cross-entropy against (1 - e) one-hot + e / V, and the gradient
    # of the mean is softmax - target on the masked tokens (NumPy).
    e, v = 0.1, logits.shape[-1]
    target = (1 - e) * np.eye(v)[ids] + e / v
    smoothed, acc = losses.masked_cross_entropy(
        jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(masked), label_smoothing=e)
    ref = -((target * logp).sum(-1) * masked).sum() / masked.sum()
    assert np.isclose(float(smoothed), ref, rtol=1e-5)
    ref_acc = (((logits.argmax(-1) == ids)) * masked).sum() / masked.sum()
    assert np.isclose(float(acc), ref_acc)
    grad = jax.grad(lambda x: losses.masked_cross_entropy(
        x, jnp.asarray(ids), jnp.asarray(masked), label_smoothing=e)[0])(jnp.asarray(logits))
    ref_grad = (np.exp(logp) - target) * masked[..., None] / masked.sum()
    assert np.allclose(np.asarray(grad), ref_grad, atol=1e-6)


def test_masked_cross_entropy_weights_examples():
    # Example weights w: sum over masked tokens of w * ce, over the sum of w per masked token
    # (NumPy); a weight that multiplies every example changes nothing.
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, N, 7)).astype(np.float32)
    ids = rng.integers(0, 7, (3, N))
    masked = rng.random((3, N)) < 0.5
    w = np.array([6.0, 1.0, 1.0], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, ids[..., None], -1)[..., 0]
    tw = masked * w[:, None]
    args = (jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(masked))
    loss, acc = losses.masked_cross_entropy(*args, example_weights=jnp.asarray(w))
    assert np.isclose(float(loss), (ce * tw).sum() / tw.sum(), rtol=1e-5)
    assert np.isclose(float(acc), ((logits.argmax(-1) == ids) * tw).sum() / tw.sum())
    plain = float(losses.masked_cross_entropy(*args)[0])
    assert not np.isclose(float(loss), plain, rtol=1e-3)
    same = losses.masked_cross_entropy(*args, example_weights=jnp.full((3,), 2.5))[0]
    assert np.isclose(float(same), plain, rtol=1e-6)


def test_a_training_step_weights_image_tokens_by_image_weight():
    # One state, one batch (two images, two videos), the same masks at every weight. A huge
    # or tiny image weight gives the images' or the videos' own mean loss (A, V); weight 1
    # the token-weighted mean, which fixes the images' share r of the masked tokens; then
    # weight 6 must give (6 r A + V) / (6 r + 1).
    from phenaki_jax import sharding
    from phenaki_jax.stages import registry
    from phenaki_jax.stages.state import create_state

    c = load_config("maskgit")
    c.batch_size = 4
    c.model.width, c.model.mlp_dim, c.model.num_heads, c.model.num_layers = 16, 32, 2, 1
    c.text.embed_dim, c.text.mlp_dim, c.text.num_layers = 16, 32, 1
    c.tokens.grid, c.tokens.vocab_size, c.data.num_frames = (3, 2, 2), 16, 5
    c.warmup_steps = 0
    c, stage = registry.for_benchmark(c, 1)
    loss = {}
    with sharding.active(sharding.make_mesh(c)):
        init, _, _ = create_state(stage.init, sharding.make_mesh(c), jax.random.key(0))
        state = init(jax.random.key(0))
        batch = stage.bench_batch(np.random.default_rng(0))
        batch["is_image"] = np.array([1, 0, 1, 0], np.int32)
        for w in (1e6, 1e-6, 1.0, 6.0):
            stage.config.masking.image_weight = w
            step = jax.jit(lambda s, b: stage.train_step(s, b))  # traced anew for each weight
            loss[w] = float(step(state, batch)[1]["loss"])
    a, v, mixed = loss[1e6], loss[1e-6], loss[1.0]
    assert abs(a - v) > 0.05  # the two kinds of example must differ for the test to mean much
    r = (v - mixed) / (mixed - a)
    assert 0 < r < 1
    assert np.isclose(loss[6.0], (6 * r * a + v) / (6 * r + 1), rtol=1e-4)


def _tiny_model(vocab=32):
    model = MaskGIT(vocab_size=vocab, grid=GRID, width=32, num_layers=2, num_heads=2,
                    mlp_dim=64, text_dim=16)
    ids = jnp.zeros((1, *GRID), jnp.int32)
    ctx = jnp.zeros((1, 5, 16))
    params = model.init(jax.random.key(0), ids, ctx, jnp.ones((1, 5)), jnp.zeros((1,), bool))
    return model, params


def test_image_examples_see_and_score_only_their_first_token_frame():
    model, params = _tiny_model()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 32, (1, *GRID))
    other = ids.copy()
    other[:, 1:] = rng.integers(0, 32, (5, 4, 4))  # padding frames of an image: anything
    ctx = jnp.asarray(rng.standard_normal((1, 5, 16)), jnp.float32)
    is_image = jnp.ones((1,), jnp.int32)
    masked, valid = masking.mask_tokens(jax.random.key(3), GRID, is_image, 0.0)

    def loss(x):
        inputs = jnp.where(masked, model.mask_id, jnp.asarray(x).reshape(1, N))
        logits = model.apply(params, inputs.reshape(1, *GRID), ctx, jnp.ones((1, 5)),
                             jnp.zeros((1,), bool), valid)
        return losses.masked_cross_entropy(logits.reshape(1, N, -1),
                                                  jnp.asarray(x).reshape(1, N), masked)[0]

    assert float(loss(ids)) == float(loss(other))


def test_text_padding_and_dropout_behave():
    model, params = _tiny_model()
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, 32, (2, *GRID)))
    ctx = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0]] * 2)
    base = model.apply(params, ids, ctx, mask, jnp.zeros((2,), bool))
    # Padded text positions are not attended to.
    ctx2 = ctx.at[:, 3:].set(100.0)
    assert np.allclose(base, model.apply(params, ids, ctx2, mask, jnp.zeros((2,), bool)),
                       atol=1e-5)
    # A dropped text is the same learned null context whatever the text was.
    d1 = model.apply(params, ids, ctx, mask, jnp.ones((2,), bool))
    d2 = model.apply(params, ids, ctx * 3 + 1, mask, jnp.ones((2,), bool))
    assert np.allclose(d1, d2, atol=1e-6)
    assert not np.allclose(d1, base, atol=1e-3)


def _random_logits_fn(vocab, seed=0):
    """A fixed random 'model': logits depend on the position, the tokens and the text flag."""
    w = jax.random.normal(jax.random.key(seed), (N, vocab))
    u = jax.random.normal(jax.random.key(seed + 1), (N, vocab))

    def fn(tokens, drop):
        mixed = (tokens.sum(1, keepdims=True) % 7).astype(jnp.float32)[..., None]
        return 3 * w[None] + 0.1 * mixed + jnp.where(drop[:, None, None], u[None], 0.0)

    return fn


@pytest.mark.parametrize("steps", [1, 4, 12])
def test_decoding_fills_everything_and_never_changes_known_tokens(steps):
    vocab = 17
    rng = np.random.default_rng(steps)
    known = rng.random((3, N)) < 0.4
    known[0] = False
    known[1, :S * 3] = True
    known_ids = rng.integers(0, vocab, (3, N))
    out = np.asarray(decode.parallel_decode(_random_logits_fn(vocab), jnp.asarray(known_ids),
                                            jnp.asarray(known), jax.random.key(0), steps, 2.0,
                                            1.0, vocab))
    assert (out[known] == known_ids[known]).all()
    assert ((0 <= out) & (out < vocab)).all()


def test_guidance_zero_is_the_conditional_model_and_greedy_is_argmax():
    vocab = 17
    fn = _random_logits_fn(vocab)
    known = jnp.zeros((2, N), bool)
    ids = jnp.zeros((2, N), jnp.int32)

    def cond_only(tokens, drop):  # the unconditional half replaced by garbage
        out = fn(tokens, drop)
        return jnp.where(drop[:, None, None], 1e3 * jnp.sin(out), out)

    a = decode.parallel_decode(fn, ids, known, jax.random.key(5), 6, 0.0, 1.0, vocab)
    b = decode.parallel_decode(cond_only, ids, known, jax.random.key(5), 6, 0.0, 1.0, vocab)
    assert (np.asarray(a) == np.asarray(b)).all()
    c = decode.parallel_decode(cond_only, ids, known, jax.random.key(5), 6, 1.0, 1.0, vocab)
    assert not (np.asarray(a) == np.asarray(c)).all()
    # One greedy step = argmax of the guided logits of the all-masked input (NumPy).
    s = 1.5
    g = decode.parallel_decode(fn, ids, known, jax.random.key(5), 1, s, 0.0, vocab)
    masked_in = jnp.full((2, N), vocab)
    cond = np.asarray(fn(masked_in, jnp.zeros((2,), bool)))
    uncond = np.asarray(fn(masked_in, jnp.ones((2,), bool)))
    assert (np.asarray(g) == np.argmax(cond + s * (cond - uncond), -1)).all()


def test_schedule_decides_the_cosine_share_per_step():
    vocab, steps = 5, 6
    seen = []

    def fn(tokens, drop):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), tokens)
        return jnp.zeros((tokens.shape[0], N, vocab))

    known = np.zeros((1, N), bool)
    known[0, :10] = True
    decode.parallel_decode(fn, jnp.zeros((1, N), jnp.int32), jnp.asarray(known),
                           jax.random.key(0), steps, 0.0, 1.0, vocab)
    masked_counts = [int((t[0] == vocab).sum()) for t in seen]
    unknown = N - 10
    expected = [unknown] + [int(np.floor(unknown * np.cos(np.pi / 2 * (s + 1) / steps)))
                            for s in range(steps - 1)]
    assert masked_counts == expected


def test_a_time_bias_decides_earlier_token_frames_first():
    """With a bias far above any log-probability, no token of frame j is decided while one
    of an earlier frame is still masked; with none, decisions land in every frame at once."""
    vocab, steps = 17, 12
    base = _random_logits_fn(vocab)
    frame = np.repeat(np.arange(6), S)

    def decided_frames(bias):
        seen = []

        def fn(tokens, drop):
            jax.debug.callback(lambda t: seen.append(np.asarray(t)), tokens)
            return base(tokens, drop)

        out = decode.parallel_decode(fn, jnp.zeros((1, N), jnp.int32), jnp.zeros((1, N), bool),
                                     jax.random.key(3), steps, 1.0, 1.0, vocab,
                                     order_bias=-bias * jnp.asarray(frame, jnp.float32))
        assert (np.asarray(out) < vocab).all()
        return [t[0] != vocab for t in seen] + [np.ones(N, bool)]  # row 0: the conditional

    for done in decided_frames(1e3):
        started = sorted(set(frame[done]))
        finished = [j for j in range(6) if done[frame == j].all()]
        assert started[:-1] == finished[:len(started) - 1], (started, finished)
    half = decided_frames(0.0)[steps // 2]
    assert len(set(frame[half])) > 2 and not half.all()  # plain MaskGIT: all over the clip


def test_choice_temperature_chooses_which_tokens_stay_not_what_they_are():
    """Greedy tokens (temperature 0): without confidence noise the first step keeps exactly the
    NumPy top-k of the guided log-probabilities; with large noise it keeps other positions, but
    every kept token is still the greedy one. Unset, the noise follows the temperature."""
    vocab, steps, s = 17, 6, 1.5
    fn = _random_logits_fn(vocab)
    ids, known = jnp.zeros((2, N), jnp.int32), jnp.zeros((2, N), bool)

    def first_step(choice):
        seen = []

        def spy(tokens, drop):
            jax.debug.callback(lambda t: seen.append(np.asarray(t)), tokens)
            return fn(tokens, drop)

        decode.parallel_decode(spy, ids, known, jax.random.key(4), steps, s, 0.0, vocab,
                               choice_temperature=choice)
        return seen[1][:2]  # the conditional rows fed to step 2

    masked_in = jnp.full((2, N), vocab)
    cond = np.asarray(fn(masked_in, jnp.zeros((2,), bool)), np.float64)
    uncond = np.asarray(fn(masked_in, jnp.ones((2,), bool)), np.float64)
    guided = cond + s * (cond - uncond)
    log_probs = guided - np.log(np.exp(guided).sum(-1, keepdims=True))
    greedy, confidence = guided.argmax(-1), log_probs.max(-1)
    kept = N - int(np.floor(N * np.cos(np.pi / 2 / steps)))
    top = np.zeros((2, N), bool)
    np.put_along_axis(top, np.argsort(-confidence, axis=1)[:, :kept], True, axis=1)

    quiet, noisy = first_step(0.0), first_step(1e3)
    assert ((quiet != vocab) == top).all()
    assert ((noisy != vocab).sum(1) == kept).all() and ((noisy != vocab) != top).any()
    for out in (quiet, noisy):
        assert (out[out != vocab] == greedy[out != vocab]).all()
    rng = np.random.default_rng(2)
    known = jnp.asarray(rng.random((2, N)) < 0.3)
    coupled = decode.parallel_decode(fn, ids, known, jax.random.key(9), steps, s, 0.7, vocab)
    explicit = decode.parallel_decode(fn, ids, known, jax.random.key(9), steps, s, 0.7, vocab,
                                      choice_temperature=0.7)
    assert (np.asarray(coupled) == np.asarray(explicit)).all()


def test_refine_frames_is_a_sweep_over_token_frames_in_order():
    """NumPy reference: for each token frame in order (twice over), mask its unknown tokens,
    run the guided model, keep its argmax there. Frames with no unknown token in any row are
    not run at all; known tokens never change."""
    vocab, fs, sweeps, s = 11, 16, 2, 1.5
    rng = np.random.default_rng(5)
    w, u = rng.standard_normal((N, vocab)), rng.standard_normal((N, vocab))
    a, e = 0.3 * rng.standard_normal((N, N)), rng.standard_normal((vocab + 1, vocab))

    def np_logits(tokens, drop):  # every position sees every other position's token
        return 3 * w[None] + np.einsum("ij,bjv->biv", a, e[tokens]) + drop[:, None, None] * u

    calls = []

    def fn(tokens, drop):
        jax.debug.callback(lambda t: calls.append(np.asarray(t)), tokens)
        mixed = jnp.einsum("ij,bjv->biv", jnp.asarray(a, jnp.float32),
                           jnp.asarray(e, jnp.float32)[tokens])
        return (3 * jnp.asarray(w, jnp.float32)[None] + mixed
                + jnp.where(drop[:, None, None], jnp.asarray(u, jnp.float32)[None], 0.0))

    tokens = rng.integers(0, vocab, (2, N))
    known = np.zeros((2, N), bool)
    known[0, :3 * fs], known[1, :fs], known[:, 5 * fs:] = True, True, True  # frames 0, 5 done
    out = np.asarray(decode.refine_frames(fn, jnp.asarray(tokens, jnp.int32),
                                          jnp.asarray(known), fs, sweeps, s, vocab))

    frame = np.arange(N) // fs
    ref, runs = tokens.copy(), 0
    for _ in range(sweeps):
        for j in range(N // fs):
            redo = ~known & (frame == j)[None]
            if not redo.any():
                continue
            runs += 1
            masked = np.where(redo, vocab, ref)
            lg = np_logits(np.concatenate([masked, masked]), np.array([0, 0, 1, 1]))
            ref = np.where(redo, (lg[:2] + s * (lg[:2] - lg[2:])).argmax(-1), ref)
    assert runs == 2 * 4 and len(calls) == runs
    assert (out == ref).all() and (out[known] == tokens[known]).all()
    assert (out != tokens).any()  # the sweep did change something: not vacuous
    # parallel_decode hands its result to the sweep when asked.
    ids = jnp.asarray(tokens, jnp.int32)
    plain = decode.parallel_decode(fn, ids, jnp.asarray(known), jax.random.key(1), 3, s, 0.5,
                                   vocab)
    refined = decode.parallel_decode(fn, ids, jnp.asarray(known), jax.random.key(1), 3, s, 0.5,
                                     vocab, refine_sweeps=sweeps, frame_size=fs)
    again = decode.refine_frames(fn, plain, jnp.asarray(known), fs, sweeps, s, vocab)
    assert (np.asarray(refined) == np.asarray(again)).all()


def test_rows_with_their_own_keys_do_not_depend_on_their_batch():
    vocab = 17
    fn = _random_logits_fn(vocab)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, vocab, (3, N)))
    known = jnp.asarray(rng.random((3, N)) < 0.3)
    keys = jnp.stack([jax.random.key(i) for i in (7, 8, 9)])
    full = decode.parallel_decode(fn, ids, known, keys, 5, 1.0, 1.0, vocab)
    alone = decode.parallel_decode(fn, ids[1:2], known[1:2], keys[1:2], 5, 1.0, 1.0, vocab)
    # _random_logits_fn mixes a row's own tokens only, so row 1 must be unaffected.
    assert (np.asarray(full[1]) == np.asarray(alone[0])).all()


def _log_softmax(w):
    w = w - w.max(-1, keepdims=True)
    return w - np.log(np.exp(w).sum(-1, keepdims=True))


def _text_position_logits_fn(vocab, seed=3):
    """A 'model' whose logits depend on the position and on whether the text is dropped:
    its likelihood of a token sequence at any guidance scale is a NumPy sum."""
    w_cond = 3 * jax.random.normal(jax.random.key(seed), (N, vocab))
    w_drop = 3 * jax.random.normal(jax.random.key(seed + 1), (N, vocab))

    def fn(tokens, drop):
        return jnp.where(drop[:, None, None], w_drop[None], w_cond[None])

    return fn, np.asarray(w_cond, np.float64), np.asarray(w_drop, np.float64)


def _guided_log_probs(w_cond, w_drop, scale):
    """log p(token | position) under cond + scale (cond - uncond), in float64."""
    return _log_softmax(w_cond + scale * (w_cond - w_drop))


@pytest.mark.parametrize("pairs, scale", [(1, 0.0), (2, 0.0), (2, 1.5)])
def test_likelihood_scores_every_unknown_token_pairs_times_under_the_guided_model(pairs, scale):
    vocab = 11
    fn, w_cond, w_drop = _text_position_logits_fn(vocab)
    rng = np.random.default_rng(pairs)
    tokens = rng.integers(0, vocab, (3, N))
    known = rng.random((3, N)) < 0.3
    got = np.asarray(decode.likelihood(fn, jnp.asarray(tokens), jnp.asarray(known), vocab,
                                       pairs, scale))
    per_token = np.take_along_axis(_guided_log_probs(w_cond, w_drop, scale)[None],
                                   tokens[..., None], -1)[..., 0]
    want = pairs * np.where(known, 0.0, per_token).sum(1)
    assert got == pytest.approx(want, rel=1e-5)

    calls = []

    def spy(t, drop):
        jax.debug.callback(lambda x, d: calls.append((np.asarray(x), np.asarray(d))), t, drop)
        return fn(t, drop)

    decode.likelihood(spy, jnp.asarray(tokens), jnp.asarray(known), vocab, pairs, scale)
    assert len(calls) == 2 * pairs
    hidden = []
    for x, d in calls:  # the batch with its text, then the same tokens without
        assert (~d[:3]).all() and d[3:].all() and (x[:3] == x[3:]).all()
        hidden.append(x[:3] == vocab)
    for i in range(pairs):  # each pair: two disjoint halves that cover the unknown tokens
        a, b = hidden[i], hidden[i + pairs]
        assert not (a & b).any() and ((a | b) == ~known).all()
        assert 0.3 < a.sum() / (~known).sum() < 0.7


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_best_of_keeps_the_candidate_most_likely_at_its_guidance_scale(scale):
    vocab = 11
    fn, w_cond, w_drop = _text_position_logits_fn(vocab)
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, vocab, (4, 2, N))
    # Example 0: the conditional model's favourite in slot 2, the guided one's in slot 1.
    candidates[2, 0] = w_cond.argmax(-1)
    candidates[1, 0] = _guided_log_probs(w_cond, w_drop, 2.0).argmax(-1)
    assert (candidates[1, 0] != candidates[2, 0]).any()
    known = np.zeros((2, N), bool)
    known[1, :S] = True
    candidates[:, 1, :S] = candidates[0, 1, :S]  # known tokens are the same in every sample
    out = np.asarray(decode.best_of(fn, jnp.asarray(candidates), jnp.asarray(known), vocab,
                                    scale))
    per_token = np.take_along_axis(_guided_log_probs(w_cond, w_drop, scale)[None, None],
                                   candidates[..., None], -1)[..., 0]
    scores = np.where(known[None], 0.0, per_token).sum(-1)  # [C, B]
    assert scores.argmax(0)[0] == (2 if scale == 0.0 else 1)
    for b in range(2):
        assert (out[b] == candidates[scores[:, b].argmax(), b]).all()


def test_candidates_are_ranked_at_the_sampling_guidance_unless_told_otherwise():
    sampling = load_config("maskgit").sampling
    del sampling["candidate_guidance"]  # a checkpoint from before the field
    sampling.guidance_scale = 1.5
    assert decode.SamplingSettings.from_config(sampling).candidate_guidance == 1.5
    sampling.candidate_guidance = 0.0
    assert decode.SamplingSettings.from_config(sampling).candidate_guidance == 0.0
    assert decode.SamplingSettings.from_config(
        sampling, candidate_guidance=3.0).candidate_guidance == 3.0


@pytest.mark.parametrize("field, value, use", [
    ("tokens.grid", (5, 4, 4), "bench"),
    ("text.encoder", "clip", "bench"),
    ("label_smoothing", 1.0, "bench"),
    ("sampling.choice_temperature", -1.0, "bench"),
    ("masking.frame_fraction", 1.5, "bench"),
    ("masking.image_weight", 0.0, "bench"),
    ("sampling.refine_sweeps", -1, "bench"),
    ("sampling.candidates", 0, "bench"),
    ("sampling.candidate_guidance", -1.0, "bench"),
    ("tokenizer_workdir", None, "train"),  # the default config has none to train with
])
def test_config_validation_names_the_field(field, value, use):
    c = load_config("maskgit")
    if value is not None:
        *parents, leaf = field.split(".")
        node = c
        for name in parents:
            node = node[name]
        node[leaf] = value
    with pytest.raises(ConfigError, match=field):
        validation.validate(c, training=use == "train")


def test_paper_variant_is_about_1_8b_parameters():
    from phenaki_jax.cli.bench import benchmark

    out = benchmark(load_config("maskgit", "variant=paper"), abstract=True)
    assert out["tokens_shape"] == [6, 16, 16]
    assert 1.7e9 < out["params"] < 1.95e9
