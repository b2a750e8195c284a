"""The masked transformer's loss: cross-entropy on the masked tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_cross_entropy(logits: Array, ids: Array, label_smoothing: float = 0.0
                        ) -> tuple[Array, Array]:
    """Per-token cross-entropy and correctness [B, N] of logits [B, N, V] against ids [B, N];
    with `label_smoothing` e the target is (1 - e) on the id plus e spread evenly."""
    logits = logits.astype(jnp.float32)
    # One max and one exp-sum over the vocabulary serve both the loss and the accuracy (a
    # separate argmax was a measurable share of the small transformer's step on CPU).
    top = jax.lax.stop_gradient(logits.max(-1))
    lse = top + jnp.log(jnp.exp(logits - top[..., None]).sum(-1))
    label = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
    target = label
    if label_smoothing:
        target = (1.0 - label_smoothing) * label + label_smoothing * logits.mean(-1)
    return lse - target, (label >= top).astype(jnp.float32)


def masked_cross_entropy(logits: Array, ids: Array, masked: Array,
                         label_smoothing: float = 0.0, example_weights: Array | None = None
                         ) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy over the masked tokens only. logits [B, N, V].

    `example_weights` [B], if given, weights every masked token of an example (the mean is
    then over the weights, so a constant weight changes nothing)."""
    ce, correct = token_cross_entropy(logits, ids, label_smoothing)
    weights = masked.astype(jnp.float32)
    if example_weights is not None:
        weights = weights * example_weights.astype(jnp.float32)[:, None]
    count = jnp.maximum(weights.sum(), 1.0)
    return (ce * weights).sum() / count, (correct * weights).sum() / count
