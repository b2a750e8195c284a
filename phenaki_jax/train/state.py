"""The training state both stages share, and the optimizer built from the config."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    """Everything the next step depends on; checkpointed whole (see train/checkpoint.py).

    `aux` holds stage-specific state (the discriminator, its optimizer, LeCam EMAs). The RNG is
    not stored: every step folds the step number into `config.seed`, so a resumed run draws
    exactly the random numbers the uninterrupted run would have.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    model_state: Any
    aux: Any
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           peak: float | None = None) -> optax.Schedule:
    """Linear warmup to the peak, then cosine decay to `end_learning_rate_factor` x peak."""
    peak = config.learning_rate if peak is None else peak
    warmup = min(config.warmup_steps, max(config.total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(config.total_steps, warmup + 1),
        end_value=peak * config.end_learning_rate_factor)


def _decay_mask(params: Any) -> Any:
    # Weight decay on matrices only: not on norms, biases, position tables or the codebook,
    # whose scale is meaningless after l2 normalisation.
    def keep(path: tuple[Any, ...], leaf: Any) -> bool:
        names = [getattr(p, "key", str(p)) for p in path]
        if any(n in ("codebook",) or str(n).endswith("_pos") for n in names):
            return False
        return getattr(leaf, "ndim", 0) >= 2

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   peak: float | None = None) -> optax.GradientTransformation:
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(learning_rate_schedule(config, peak), b1=config.adam_b1,
                             b2=config.adam_b2, weight_decay=config.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts)


def all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """`on_true` if the scalar `pred` else `on_false`, for two trees of the same structure.

    One `lax.cond` rather than a `where` per leaf: `pred` is usually `all_finite` of many
    leaves, which XLA rewrites into a chain of scalar ANDs and then copies into every leaf's
    select fusion. For a width-32 tokenizer step that was 43,000 ANDs in 125,000 lines of
    optimised HLO and 33 s of XLA:CPU compilation; with the cond, 32,000 lines and 9 s, and
    the step runs as fast.
    """
    return jax.lax.cond(pred, lambda: on_true, lambda: on_false)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
