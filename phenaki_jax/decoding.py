"""MaskGIT parallel decoding, the whole schedule inside one compiled `lax.fori_loop`.

Every step predicts all masked tokens at once, keeps the most confident ones and re-masks the
rest, so that after step s a fraction cos(pi/2 * (s + 1) / S) of the unknown tokens is still
masked (none after the last step). Known tokens (the re-encoded frames of a story, or the image
of image-to-video) are never changed. Classifier-free guidance runs the conditional and the
unconditional pass as one batch of 2B; `guidance_scale`, `temperature` and `choice_temperature`
are traced values, so changing them does not recompile: one compilation per (batch, grid,
num_steps, refine_sweeps).

After the schedule, `refine_frames` can revisit the result one token frame at a time: each
frame's unknown tokens are masked again and re-predicted, greedily, from every other frame.
Parallel decoding decides a frame's tokens while its neighbours are still mostly masked; the
revisit lets each frame agree with both of its now-decided neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from phenaki_jax.config.validation import validate_sampling
from phenaki_jax.models.layers import argmax_last

Array = jax.Array
# logits_fn(ids [B', N] with mask ids, drop_text bool [B']) -> logits [B', N, V]
LogitsFn = Callable[[Array, Array], Array]


@flax.struct.dataclass
class SamplingSettings:
    """The decoding knobs, read from `config.sampling` with a command's flags on top and
    validated once. A pytree: `num_steps` and `refine_sweeps` are static (changing them
    recompiles), the others are traced values (changing them does not)."""

    num_steps: int = flax.struct.field(pytree_node=False)
    refine_sweeps: int = flax.struct.field(pytree_node=False)
    candidates: int = flax.struct.field(pytree_node=False)  # samples, the most likely kept
    guidance_scale: float
    candidate_guidance: float  # the guidance scale the candidates are ranked at
    temperature: float
    choice_temperature: float  # noise on the confidences that choose the kept tokens
    time_bias: float  # confidence handicap per token frame: earlier frames first

    FIELDS = ("num_steps", "guidance_scale", "temperature", "choice_temperature", "time_bias",
              "refine_sweeps", "candidates", "candidate_guidance")

    @classmethod
    def from_config(cls, sampling: ml_collections.ConfigDict,
                    **overrides: Any) -> SamplingSettings:  # noqa: ANN401
        """`config.sampling` with the overrides that are not None (flags named by the field).

        A config without `time_bias`, `refine_sweeps` or `candidates` (an older checkpoint)
        decodes without them (one candidate); without `choice_temperature` (or None) the
        token temperature scales the confidence noise too, as it did before that field
        existed; without `candidate_guidance` (or None) candidates are ranked at the
        sampler's `guidance_scale`.
        """
        unknown = set(overrides) - set(cls.FIELDS)
        if unknown:
            raise TypeError(f"unknown sampling settings {sorted(unknown)}")
        values = {"time_bias": 0.0, "refine_sweeps": 0, "candidates": 1,
                  "choice_temperature": None, "candidate_guidance": None,
                  **{k: sampling[k] for k in cls.FIELDS if k in sampling}}
        validate_sampling(values, "config.sampling.")
        values.update({k: v for k, v in overrides.items() if v is not None})
        validate_sampling(values, "--")
        if values["choice_temperature"] is None:
            values["choice_temperature"] = values["temperature"]
        if values["candidate_guidance"] is None:
            values["candidate_guidance"] = values["guidance_scale"]
        return cls(num_steps=int(values["num_steps"]), refine_sweeps=int(values["refine_sweeps"]),
                   candidates=int(values["candidates"]),
                   guidance_scale=float(values["guidance_scale"]),
                   candidate_guidance=float(values["candidate_guidance"]),
                   temperature=float(values["temperature"]),
                   choice_temperature=float(values["choice_temperature"]),
                   time_bias=float(values["time_bias"]))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}


def mask_ratio(fraction: Array | float) -> Array:
    """The cosine schedule: the share of unknown tokens still masked at `fraction` of the way."""
    return jnp.cos(0.5 * math.pi * jnp.asarray(fraction, jnp.float32))


def guided_logits(cond: Array, uncond: Array, guidance_scale: Array | float) -> Array:
    """cond + s (cond - uncond): s = 0 is exactly the conditional model."""
    return cond + guidance_scale * (cond - uncond)


def guided_pass(logits_fn: LogitsFn, tokens: Array, guidance_scale: Array | float) -> Array:
    """Guided float32 logits [B, N, V] for tokens [B, N]: one model call on the conditional
    batch followed by the same tokens with the text dropped."""
    b = tokens.shape[0]
    drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
    logits = logits_fn(jnp.concatenate([tokens, tokens]), drop).astype(jnp.float32)
    return guided_logits(logits[:b], logits[b:], guidance_scale)


def row_keys(rng: Array, b: int) -> Array:
    """One PRNG key per example [B]: `rng` split B ways, or `rng` itself when it already is
    one key per example (then an example's draws depend on its own key only)."""
    return jax.random.split(rng, b) if rng.ndim == 0 else rng


def parallel_decode(logits_fn: LogitsFn, known_ids: Array, known: Array, rng: Array,
                    num_steps: int, guidance_scale: Array | float, temperature: Array | float,
                    mask_id: int, order_bias: Array | float = 0.0,
                    choice_temperature: Array | float | None = None,
                    refine_sweeps: int = 0, frame_size: int | None = None) -> Array:
    """Fills every unknown token.

    Args:
      logits_fn: the transformer with its parameters and text bound (see `LogitsFn`); it gets
        the conditional batch followed by the same tokens with the text dropped.
      known_ids: int32 [B, N], the fixed tokens (any value where `known` is False).
      known: bool [B, N], True where a token is given and must stay.
      rng: a PRNG key, or one key per example [B] (then an example's tokens depend on its own
        key only, not on what else is in the batch).
      num_steps: decoding steps S (static).
      guidance_scale: classifier-free guidance scale (0: conditional model only).
      temperature: the temperature at which each token is sampled (0: greedy).
      mask_id: the mask token id (= vocabulary size).
      order_bias: added to every token's confidence, [N] or [B, N] (e.g. minus a multiple
        of its token frame, so that earlier frames are decided first; 0: plain MaskGIT).
      choice_temperature: scale of the Gumbel noise added to the confidences that choose which
        tokens are kept, annealed linearly to 0 over the steps (MaskGIT's "choice
        temperature"; 0: the most confident first). None: `temperature`, one knob for both.

    Returns:
      int32 [B, N]: `known_ids` where `known`, sampled tokens elsewhere.
    """
    b, n = known_ids.shape
    known = known.astype(bool)
    tokens0 = jnp.where(known, known_ids, mask_id).astype(jnp.int32)
    num_unknown = jnp.sum(~known, axis=1)  # [B]
    temperature = jnp.asarray(temperature, jnp.float32)
    choice_temperature = (temperature if choice_temperature is None
                          else jnp.asarray(choice_temperature, jnp.float32))
    keys = row_keys(rng, b)

    def draws(s: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
        def one(key: Array) -> tuple[Array, Array]:
            k1, k2 = jax.random.split(jax.random.fold_in(key, s))
            return jax.random.gumbel(k1, shape), jax.random.gumbel(k2, shape[:1])

        return jax.vmap(one)(keys)

    def step(s: Array, tokens: Array) -> Array:
        logits = guided_pass(logits_fn, tokens, guidance_scale)  # [B, N, V]
        gumbel, noise = draws(s, logits.shape[1:])
        # argmax(l / T + g) == argmax(l + T g): a categorical sample at temperature T, greedy
        # at T = 0, without dividing by zero.
        sampled = argmax_last(logits + temperature * gumbel)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        confidence = jnp.take_along_axis(log_probs, sampled[..., None], -1)[..., 0]
        anneal = 1.0 - (s + 1.0) / num_steps
        confidence = confidence + choice_temperature * anneal * noise + order_bias

        masked = tokens == mask_id
        confidence = jnp.where(masked, confidence, jnp.inf)
        filled = jnp.where(masked, sampled, tokens)
        # How many stay masked after this step; at least one token is decided per step.
        # (+1e-4: cos(pi/3) is 0.49999997 in float32, and 86 * 0.5 must floor to 43, not 42.)
        still = jnp.floor(num_unknown * mask_ratio((s + 1.0) / num_steps) + 1e-4
                          ).astype(jnp.int32)
        current = jnp.sum(masked, axis=1)
        still = jnp.clip(still, 0, jnp.maximum(current - 1, 0))
        order = jnp.sort(confidence, axis=1)
        cutoff = jnp.take_along_axis(order, still[:, None], axis=1)  # the (still)-th smallest
        remask = masked & (confidence < cutoff)
        return jnp.where(remask, mask_id, filled)

    tokens = jax.lax.fori_loop(0, num_steps, step, tokens0)
    tokens = jnp.where(known, known_ids, tokens).astype(jnp.int32)
    if refine_sweeps:
        if frame_size is None:
            raise ValueError("refine_sweeps needs frame_size")
        tokens = refine_frames(logits_fn, tokens, known, frame_size, refine_sweeps,
                               guidance_scale, mask_id)
    return tokens


def refine_frames(logits_fn: LogitsFn, tokens: Array, known: Array, frame_size: int,
                  sweeps: int, guidance_scale: Array | float, mask_id: int) -> Array:
    """Re-predicts the unknown tokens one token frame at a time, frames in order.

    For each frame j (first to last, `sweeps` times over): mask the unknown tokens of frame j,
    run the guided model on the rest and put its most likely tokens back there. A frame with
    no unknown token (in any example) is skipped without running the model, so the re-encoded
    frames of a story continuation cost nothing.

    Args:
      logits_fn, guidance_scale, mask_id: as for `parallel_decode`.
      tokens: int32 [B, N] with no mask ids.
      known: bool [B, N]; these tokens never change.
      frame_size: tokens per token frame; N must be a multiple of it.
      sweeps: passes over all frames (static).

    Returns:
      int32 [B, N].
    """
    n = tokens.shape[1]
    if n % frame_size:
        raise ValueError(f"{n} tokens are not whole frames of {frame_size}")
    num_frames = n // frame_size
    frame_of = jnp.arange(n) // frame_size
    unknown = ~known.astype(bool)

    def revisit(r: Array, tokens: Array) -> Array:
        redo = unknown & (frame_of == r % num_frames)[None]

        def predict(tokens: Array) -> Array:
            masked = jnp.where(redo, mask_id, tokens)
            best = argmax_last(guided_pass(logits_fn, masked, guidance_scale))
            return jnp.where(redo, best, tokens)

        return jax.lax.cond(jnp.any(redo), predict, lambda t: t, tokens)

    return jax.lax.fori_loop(0, sweeps * num_frames, revisit, tokens)


# The fixed halves that `likelihood` masks: the same for every call, so a candidate's score
# depends on its tokens and text only.
LIKELIHOOD_SEED = 20_250_601


def likelihood(logits_fn: LogitsFn, tokens: Array, known: Array, mask_id: int,
               pairs: int = 2, guidance_scale: Array | float = 0.0) -> Array:
    """[B] float32: each example's log-likelihood of its unknown tokens under the guided model
    (`guided_logits` at `guidance_scale`; 0: the conditional model), every unknown token
    predicted with about half of the others masked.

    A masked model has no exact likelihood; this sums log p(token | the other half, text) over
    `pairs` pairs of complementary random halves of the positions (fixed by
    LIKELIHOOD_SEED), so each unknown token is scored `pairs` times, and known tokens are
    never masked or scored. 2 * `pairs` model calls on the batch with and without its text.
    """
    b, n = tokens.shape
    halves = jax.random.bernoulli(jax.random.key(LIKELIHOOD_SEED), 0.5, (pairs, n))
    known = known.astype(bool)
    total = jnp.zeros((b,), jnp.float32)
    for half in [*halves, *~halves]:
        hidden = half[None] & ~known
        logits = guided_pass(logits_fn, jnp.where(hidden, mask_id, tokens), guidance_scale)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        scored = jnp.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
        total = total + jnp.sum(jnp.where(hidden, scored, 0.0), axis=1)
    return total


def best_of(logits_fn: LogitsFn, candidates: Array, known: Array, mask_id: int,
            guidance_scale: Array | float = 0.0) -> Array:
    """int32 [B, N]: of C samples [C, B, N] per example, the one `likelihood` at
    `guidance_scale` rates highest (the first on a tie). Ragged samples are the unlikely
    ones; ranked under the conditional model alone, samples of a colour and shape that only
    images show come out worse than one sample, and guidance in the ranking weighs the text
    back in (docs/experiments/prompt-adherence.md)."""
    c, b, n = candidates.shape
    scores = likelihood(logits_fn, candidates.reshape(c * b, n), jnp.tile(known, (c, 1)),
                        mask_id, guidance_scale=guidance_scale).reshape(c, b)
    best = jnp.argmax(scores, axis=0)
    return jnp.take_along_axis(candidates, best[None, :, None], axis=0)[0]
