"""The training state both stages share, the optimizer built from the config, and the one
update sequence every stage's step ends with: optimizer -> EMA -> non-finite guard."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from phenaki_jax import sharding


@flax.struct.dataclass
class TrainState:
    """Everything the next step depends on; checkpointed whole (see checkpoint.py).

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


def initial_state(tx: optax.GradientTransformation, params: Any, ema_decay: float,
                  model_state: Any = None, aux: Any = None) -> TrainState:
    """Step 0: fresh optimizer state, the EMA (when `ema_decay` > 0) equal to the parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        ema_params=params if ema_decay > 0 else {},
        model_state={} if model_state is None else model_state,
        aux={} if aux is None else aux,
        nonfinite_streak=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32))


def optimizer_update(tx: optax.GradientTransformation, state: TrainState, grads: Any
                     ) -> tuple[Any, Any, jax.Array]:
    """(new parameters, new optimizer state, global gradient norm) of one optimizer step."""
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, grad_norm


def commit(state: TrainState, ema_decay: float, loss: jax.Array, grad_norm: jax.Array,
           params: Any, opt_state: Any, also_finite: Any = None, **fields: Any) -> TrainState:
    """The state after a step: the EMA follows the new parameters, and the step takes effect
    only if its loss, gradient norm, new parameters (and `also_finite`) are all finite;
    otherwise nothing but the step and the non-finite counters changes. `fields` replace
    further parts of the state (model_state, aux) under the same guard."""
    ema = state.ema_params
    if ema_decay > 0:
        ema = ema_update(state.ema_params, params, ema_decay)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    if also_finite is not None:
        ok = ok & all_finite(also_finite)
    candidate = state.replace(params=params, opt_state=opt_state, ema_params=ema, **fields)
    new_state = select_tree(ok, candidate, state)
    return new_state.replace(
        step=state.step + 1,
        nonfinite_streak=jnp.where(ok, 0, state.nonfinite_streak + 1),
        nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))


def step_metrics(config: ml_collections.ConfigDict, state: TrainState, new_state: TrainState,
                 grad_norm: jax.Array) -> dict[str, jax.Array]:
    """The metrics every stage's step reports beside its own."""
    return {"grad_norm": grad_norm,
            "learning_rate": learning_rate_schedule(config)(state.step),
            "nonfinite_steps": new_state.nonfinite_total.astype(jnp.float32),
            "nonfinite_streak": new_state.nonfinite_streak.astype(jnp.float32)}


def create_state(init: Any, mesh: jax.sharding.Mesh, rng: jax.Array  # noqa: ANN401
                 ) -> tuple[Any, Any, Any]:
    """For `init(rng)` -> a state with logically boxed leaves: (jitted init that creates the
    state sharded, the abstract unboxed state with shardings, the state's shardings).
    Nothing is ever materialised unsharded."""
    boxed = jax.eval_shape(init, rng)
    state_shardings = sharding.tree_shardings(mesh, boxed)
    # Shapes only: no sharding constraint can apply to them (the mesh may be active).
    plain = jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                         if isinstance(x, nn.Partitioned) else x, boxed,
                         is_leaf=lambda x: isinstance(x, nn.Partitioned))
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, state_shardings)

    def init_fn(key: jax.Array) -> Any:  # noqa: ANN401
        return nn.unbox(init(key))

    return jax.jit(init_fn, out_shardings=state_shardings), abstract, state_shardings
