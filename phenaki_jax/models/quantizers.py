"""Factorized, l2-normalised vector quantization (ViT-VQGAN style, as Phenaki uses).

The encoder output is projected to a low dimension (`code_dim`, 32 in the paper), both it and
the codebook are l2-normalised, and the nearest code by cosine similarity is chosen. Low
dimension and normalisation keep far more of the codebook in use than plain VQ does; what is
left dead is restarted from encoder outputs by `restart_dead_codes`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from phenaki_jax.models.layers import argmax_last

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=axis, keepdims=True) + eps)


class FactorizedVQ(nn.Module):
    """Quantizes [..., code_dim] unit vectors onto a normalised codebook of `codebook_size`.

    Variables: `params/codebook` [K, code_dim]; `vq_stats/usage` [K], an EMA of the share of
    tokens assigned to each code (for dead-code restart and the usage metric).
    """

    codebook_size: int
    code_dim: int
    commitment_weight: float = 0.25
    usage_decay: float = 0.99

    def setup(self) -> None:
        self.codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("codebook", "code")),
            (self.codebook_size, self.code_dim), jnp.float32)
        self.usage = self.variable(
            "vq_stats", "usage",
            lambda: jnp.zeros((self.codebook_size,), jnp.float32))

    def normalized_codebook(self) -> Array:
        return l2_normalize(self.codebook)

    def lookup(self, ids: Array) -> Array:
        """ids int32 [...] -> unit code vectors [..., code_dim]."""
        return jnp.take(self.normalized_codebook(), ids, axis=0)

    def __call__(self, z: Array, update_stats: bool = False, mask: Array | None = None
                 ) -> dict[str, Array]:
        """z: [..., code_dim] (any scale; normalised here).

        `mask` (broadcastable to `z.shape[:-1]`, 1 for a real token, 0 for padding, such as the
        tokens of an image's padding frames) keeps padding out of the loss, the usage
        statistics and the restart candidates: a codebook that also fit the padding would spend
        codes on it. Without a mask every token counts.

        Returns `quantized` (straight-through, same shape), `ids` int32 [...], `loss` (codebook
        + commitment), `z` (the normalised inputs) and `errors` (their squared distance to the
        chosen code; 0 for padding), both for restarts, and usage metrics.
        """
        z = l2_normalize(z)
        codebook = self.normalized_codebook()
        # For unit vectors, the nearest code in L2 is the one with the largest dot product.
        sim = jnp.einsum("...d,kd->...k", z, codebook)
        ids = argmax_last(sim)
        q = jnp.take(codebook, ids, axis=0)
        weight = (jnp.ones(ids.shape, jnp.float32) if mask is None
                  else jnp.broadcast_to(mask, ids.shape).astype(jnp.float32))
        real = jnp.maximum(weight.sum(), 1.0)

        def mean_over_real(sq: Array) -> Array:
            return jnp.sum(sq.mean(axis=-1) * weight) / real

        codebook_loss = mean_over_real(jnp.square(jax.lax.stop_gradient(z) - q))
        commitment = mean_over_real(jnp.square(z - jax.lax.stop_gradient(q)))
        loss = codebook_loss + self.commitment_weight * commitment
        quantized = z + jax.lax.stop_gradient(q - z)

        counts = jnp.zeros((self.codebook_size,), jnp.float32).at[ids.reshape(-1)].add(
            weight.reshape(-1))
        share = counts / real
        entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(share), 0.0))
        if update_stats and not self.is_initializing():
            self.usage.value = self.usage_decay * self.usage.value + (1 - self.usage_decay) * share
        return {
            "quantized": quantized,
            "ids": ids,
            "loss": loss,
            "z": z,
            "errors": weight * jnp.sum(jnp.square(jax.lax.stop_gradient(z - q)), axis=-1),
            "perplexity": jnp.exp(entropy),
            "batch_usage": jnp.mean((counts > 0).astype(jnp.float32)),
        }


def restart_dead_codes(codebook: Array, usage: Array, candidates: Array, errors: Array,
                       rng: Array, threshold: float) -> tuple[Array, Array, Array]:
    """Restarts codes whose usage EMA is below `threshold` x the uniform share 1/K.

    codebook [K, d]; usage [K]; candidates [N, d] unit encoder outputs of the current batch and
    errors [N] their squared distance to the code they were assigned; a candidate with error 0
    (padding, or a token already on its code) is never drawn. New codes are drawn from the
    candidates with probability proportional to that error (k-means++ style): in a data set
    where most tokens are background, uniform draws would restart codes on the background, while
    error-weighted draws put them where the codebook represents the data worst.
    Returns the new codebook, the new usage (restarted codes get the uniform share, so they are
    not restarted again before they had a chance) and the number of restarted codes.
    """
    k = codebook.shape[0]
    n = candidates.shape[0]
    dead = usage < threshold / k
    # Gumbel top-k: distinct candidates, each kept with probability growing with its error.
    # (Independent draws pile many dead codes onto the same few tokens; all but one of those
    # die again.) The r-th dead code takes the r-th ranked candidate.
    scores = jnp.where(errors > 0, jnp.log(jnp.maximum(errors, 1e-30)), -jnp.inf)
    scores = scores + jax.random.gumbel(rng, (n,))
    ranked = jnp.argsort(-scores)
    rank_of_code = jnp.cumsum(dead) - 1
    # More dead codes than drawable candidates: go round the drawable ones again (the noise
    # below separates the copies).
    drawable = jnp.maximum(jnp.sum(errors > 0), 1)
    picks = ranked[jnp.clip(rank_of_code, 0, None) % drawable]
    noise = 0.01 * jax.random.normal(jax.random.fold_in(rng, 1), codebook.shape)
    fresh = l2_normalize(candidates[picks] + noise)
    # Keep the stored scale of the codebook: only directions matter after normalisation.
    scale = jnp.linalg.norm(codebook, axis=-1, keepdims=True)
    new_codebook = jnp.where(dead[:, None], fresh * scale, codebook)
    new_usage = jnp.where(dead, 1.0 / k, usage)
    return new_codebook, new_usage, jnp.sum(dead)
