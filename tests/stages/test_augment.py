"""Random symmetries of training clips, against numpy's rotations, mirrors and reversals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from phenaki_jax.config import ConfigError
from phenaki_jax.config.validation import augment_ops
from phenaki_jax.stages.augment import augment
from phenaki_jax.stages.cvivit import CViViTStage


def _clips(n: int, t: int = 3, r: int = 4) -> np.ndarray:
    # Every pixel distinct, so each symmetry gives a different clip.
    return np.random.default_rng(0).permutation(n * t * r * r * 2).reshape(n, t, r, r, 2)


def _square_symmetries(clip: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of a [T, H, W, C] clip's square frames, by numpy's rot90 and flip."""
    rotations = [np.rot90(clip, k, axes=(1, 2)) for k in range(4)]
    return rotations + [np.flip(r, axis=2) for r in rotations]


def _which(out: np.ndarray, candidates: list[np.ndarray]) -> int:
    hits = [i for i, c in enumerate(candidates) if np.array_equal(out, c)]
    assert len(hits) == 1, "output is not exactly one of the expected transforms"
    return hits[0]


def test_dihedral_gives_each_clip_one_of_the_8_symmetries_all_of_them_in_turn():
    x = _clips(96)
    out = np.asarray(augment(x, jax.random.key(0), ("dihedral",)))
    seen = [_which(o, _square_symmetries(c)) for o, c in zip(out, x, strict=True)]
    counts = np.bincount(seen, minlength=8)
    assert (counts > 0).all(), counts  # 96 draws of 8 outcomes: each misses with p < 1e-5


def test_flip_mirrors_left_right_and_reverse_spares_images():
    x = _clips(64)
    is_image = np.arange(64) % 2
    out = np.asarray(augment(x, jax.random.key(1), ("flip", "reverse"), is_image))
    kinds = []
    for o, c, image in zip(out, x, is_image, strict=True):
        options = [c, np.flip(c, 2), np.flip(c, 0), np.flip(np.flip(c, 2), 0)]
        k = _which(o, options)
        assert not (image and k >= 2), "an image's padding frames were moved before it"
        kinds.append(k)
    assert set(kinds[1::2]) == {0, 1}  # images: mirrored or not
    assert set(kinds[0::2]) == {0, 1, 2, 3}  # videos: either, and reversed or not


def test_the_same_key_draws_the_same_symmetries_another_key_others():
    x = _clips(32)
    ops = ("flip", "dihedral", "reverse")
    a = np.asarray(augment(x, jax.random.key(7), ops))
    np.testing.assert_array_equal(a, np.asarray(augment(x, jax.random.key(7), ops)))
    assert not np.array_equal(a, np.asarray(augment(x, jax.random.key(8), ops)))


@pytest.mark.parametrize("spec,ops", [("", ()), ("flip", ("flip",)),
                                      (" dihedral , reverse", ("dihedral", "reverse"))])
def test_augment_spec_parses(spec, ops):
    assert augment_ops(spec) == ops


@pytest.mark.parametrize("spec", ["spin", "flip,flip"])
def test_bad_augment_spec_names_the_field(spec):
    with pytest.raises(ConfigError, match="config.data.augment"):
        augment_ops(spec)


def test_channels_gives_each_clip_one_of_the_6_colour_orders_all_of_them_in_turn():
    x = _clips(96)[..., :1].repeat(3, -1) * 3 + np.arange(3)  # channels distinct
    out = np.asarray(augment(x, jax.random.key(2), ("channels",)))
    orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    seen = [_which(o, [c[..., list(p)] for p in orders]) for o, c in zip(out, x, strict=True)]
    assert (np.bincount(seen, minlength=6) > 0).all()


def test_a_training_step_learns_from_the_clips_under_the_steps_symmetries():
    """With `data.augment` the step is the plain step on the transformed clips, drawn from the
    step's RNG (so a resumed run draws the same): here checked against the plain step on
    numpy's rotations of the clips."""
    c = load_config("cvivit")
    c.batch_size, c.data.num_frames, c.data.image_batch_size = 4, 3, 0
    c.model.width, c.model.mlp_dim, c.warmup_steps = 32, 64, 0
    plain = CViViTStage(c)
    c.data.augment = "dihedral"
    augmented = CViViTStage(c)
    state = nn.unbox(plain.init(jax.random.key(0)))
    frames = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32, 3), dtype=np.uint8)
    is_image = jnp.zeros((4,), jnp.int32)
    new, metrics = jax.jit(augmented.train_step)(state, {"frames": jnp.asarray(frames),
                                                         "is_image": is_image})
    # The symmetries drawn: the step's key as the stage derives it.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), 0), 5)
    drawn = np.asarray(augment(frames, key, ("dihedral",)))
    which = [_which(o, _square_symmetries(f)) for o, f in zip(drawn, frames, strict=True)]
    assert len(set(which)) > 1  # a batch of clips not all turned the same way
    rotated = np.stack([_square_symmetries(f)[k] for f, k in zip(frames, which, strict=True)])
    step = jax.jit(plain.train_step)
    ref, ref_metrics = step(state, {"frames": jnp.asarray(rotated), "is_image": is_image})
    for a, b in zip(jax.tree.leaves((new, metrics)), jax.tree.leaves((ref, ref_metrics)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    unturned, _ = step(state, {"frames": jnp.asarray(frames), "is_image": is_image})
    assert not np.allclose(np.asarray(jax.tree.leaves(unturned.params)[0]),
                           np.asarray(jax.tree.leaves(new.params)[0]))


def test_shift_translates_each_clip_with_mirrored_borders_by_up_to_an_eighth():
    x = _clips(64, t=2, r=16)  # 16 px frames: shifts of -2..2 pixels each way
    out = np.asarray(augment(x, jax.random.key(3), ("shift",)))
    seen = set()
    for o, c in zip(out, x, strict=True):
        padded = np.pad(c, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
        crops = [padded[:, y:y + 16, x0:x0 + 16] for y in range(5) for x0 in range(5)]
        seen.add(_which(o, crops))
    assert len(seen) >= 20, seen  # 64 draws of 25 offsets: most of them occur


def test_zoom_shows_half_the_clips_at_half_size_in_a_mirrored_mosaic():
    x = _clips(32, t=2, r=8).astype(np.uint8)
    out = np.asarray(augment(x, jax.random.key(4), ("zoom",)))
    kinds = []
    for o, c in zip(out, x, strict=True):
        half = np.round(c.reshape(2, 4, 2, 4, 2, 2).astype(np.float64).mean(axis=(2, 4)))
        half = np.asarray(half, np.uint8)
        top = np.concatenate([half, np.flip(half, 2)], axis=2)
        kinds.append(_which(o, [c, np.concatenate([top, np.flip(top, 1)], axis=1)]))
    assert set(kinds) == {0, 1}
