"""MaskGIT's training masks: which tokens of a batch are hidden and scored.

The share of masked tokens follows the same cosine schedule the decoder uses
(`decoding.mask_ratio`), so training asks the questions decoding will.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phenaki_jax import decoding

Array = jax.Array


def context_token_frames(context_frames: Array, temporal_patch: int) -> Array:
    """int [B]: the token frames made only of the first `context_frames` frames of each clip
    (frame 0 is token frame 0 alone, then tubelets of `temporal_patch` frames); a tubelet
    that straddles the boundary is not one of them."""
    c = jnp.asarray(context_frames, jnp.int32)
    return jnp.where(c > 0, 1 + (c - 1) // temporal_patch, 0)


def mask_tokens(rng: Array, grid: tuple[int, int, int], is_image: Array,
                prefix_fraction: float, frame_fraction: float = 0.0,
                given_frames: Array | None = None) -> tuple[Array, Array]:
    """MaskGIT training masks for a batch.

    Args:
      rng: PRNG key.
      grid: (t, h, w) tokens per clip.
      is_image: int [B], 1 for an image (a one-frame video: only token frame 0 exists).
      prefix_fraction: share of videos whose first j token frames (j uniform in 1..t-1) stay
        unmasked, as the story decoder's known tokens do.
      frame_fraction: share of the other videos in which exactly one token frame (uniform)
        is masked, wholly, and every other frame is given, as `decoding.refine_frames` asks the
        model to predict (static; 0 draws no extra random numbers).
      given_frames: int [B] or None: this many leading token frames of each example are
        always given, never masked: a continuation clip's context, which its caption does not
        describe (`context_token_frames`). The random draws are the same with or without it.

    Returns:
      (masked, valid), bool [B, N] with N = t*h*w: `masked` tokens are replaced by the mask
      token and scored; `valid` tokens exist. A cosine-distributed share cos(pi/2 u), u ~ U(0,1),
      of each example's eligible tokens is masked, at least one.
    """
    t, h, w = grid
    n, s = t * h * w, h * w
    b = is_image.shape[0]
    k_ratio, k_scores, k_prefix, k_len = jax.random.split(rng, 4)
    idx = jnp.arange(n)[None, :]
    image = is_image.reshape(b, 1) > 0
    valid = jnp.where(image, idx < s, True)
    use_prefix = (jax.random.uniform(k_prefix, (b, 1)) < prefix_fraction) & ~image
    prefix_len = jax.random.randint(k_len, (b, 1), 1, max(t, 2)) * s
    given_len = jnp.where(use_prefix, prefix_len, 0)
    if given_frames is not None:
        given_len = jnp.maximum(given_len, given_frames.reshape(b, 1) * s)
    eligible = valid & ~(idx < given_len)
    ratio = decoding.mask_ratio(jax.random.uniform(k_ratio, (b,)))
    if frame_fraction:
        k_frame, k_which = jax.random.split(jax.random.fold_in(rng, 1))
        use_frame = ((jax.random.uniform(k_frame, (b, 1)) < frame_fraction) & ~image
                     & ~use_prefix)
        if given_frames is not None:
            use_frame &= given_frames.reshape(b, 1) == 0
        which = jax.random.randint(k_which, (b, 1), 0, t)
        eligible = jnp.where(use_frame, idx // s == which, eligible)
        ratio = jnp.where(use_frame[:, 0], 1.0, ratio)
    num_eligible = eligible.sum(1)
    num_mask = jnp.clip(jnp.ceil(ratio * num_eligible).astype(jnp.int32), 1, num_eligible)
    scores = jnp.where(eligible, jax.random.uniform(k_scores, (b, n)), 2.0)
    cutoff = jnp.take_along_axis(jnp.sort(scores, axis=1), (num_mask - 1)[:, None], axis=1)
    return eligible & (scores <= cutoff), valid
