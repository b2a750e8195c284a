"""The T5 encoder stack in Flax (v1.0 "relu" and v1.1 "gated-gelu"): `T5Config`, `T5Encoder`,
returning the last hidden state after the final RMS layer norm, float32 [B, L, d_model].
Checkpoint loaders are in `loaders.py`, tokenizers in `tokenizers.py`.

`T5Encoder`'s parameter tree mirrors T5X's names, so a T5X checkpoint maps almost one to one:

    token_embedder/embedding                      [vocab, d_model]        (vocab, embed)
    relpos_bias/rel_embedding                     [heads, buckets]        (heads, None)
    layers_{i}/pre_attention_layer_norm/scale     [d_model]               (embed,)
    layers_{i}/attention/{query,key,value}/kernel [d_model, heads, d_kv]  (embed, heads, kv)
    layers_{i}/attention/out/kernel               [heads, d_kv, d_model]  (heads, kv, embed)
    layers_{i}/pre_mlp_layer_norm/scale           [d_model]               (embed,)
    layers_{i}/mlp/{wi_0,wi_1}/kernel (gated) or layers_{i}/mlp/wi/kernel
                                                  [d_model, d_ff]         (embed, mlp)
    layers_{i}/mlp/wo/kernel                      [d_ff, d_model]         (mlp, embed)
    encoder_norm/scale                            [d_model]               (embed,)

T5X stores attention kernels flat ([d_model, heads * d_kv]); they are kept split by head here so
that `heads` can be sharded like the rest of the project's attention layers. The bucket axis of
the relative-position table is tiny and stays replicated (logical name None).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models.layers import Projection, dtype_of
from phenaki_jax.models.t5.errors import PAD_ID, TextEncoderError

Array = jax.Array
Params = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

# Hugging Face's activation names -> ours. HF maps "gated-gelu" to "gelu_new" (tanh
# approximation), which is also what T5X's "gelu" (flax's default `nn.gelu`) computes.
_ACTIVATIONS = {
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
}

# Hugging Face T5Config's defaults, used for keys a config.json leaves out (as HF does).
_HF_DEFAULTS = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
                "num_heads": 8, "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6}


def _parse_feed_forward_proj(value: str) -> tuple[bool, str]:
    """HF's `feed_forward_proj` ("relu", "gated-gelu", "gated-silu", ...) -> (gated, activation
    name in our vocabulary)."""
    parts = str(value).split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise TextEncoderError(f"feed_forward_proj '{value}' is not '[gated-]ACTIVATION'")
    act = "gelu_new" if value == "gated-gelu" else parts[-1]
    if act not in _ACTIVATIONS:
        raise TextEncoderError(f"feed_forward_proj '{value}': unknown activation '{act}' "
                               f"(known: {', '.join(sorted(_ACTIVATIONS))})")
    return len(parts) == 2, _ACTIVATIONS[act]


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Sizes of a T5 encoder. `feed_forward_proj` uses Hugging Face's strings: "gated-gelu"
    (T5 v1.1: gelu_tanh(wi_0 x) * wi_1 x) or "relu" (T5 v1.0: relu(wi x)); "gated-silu",
    "gelu" (exact erf GELU), etc. follow HF's meaning too. `dtype` is the compute dtype
    ("float32" or "bfloat16"); parameters and the output are float32 either way."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise TextEncoderError(f"T5Config.{name} must be a positive integer, got {value!r}")
        if self.relative_attention_num_buckets < 4:
            # Half the buckets per direction, half of those exact: fewer than 4 leaves none.
            raise TextEncoderError("T5Config.relative_attention_num_buckets must be >= 4, got "
                                   f"{self.relative_attention_num_buckets}")
        if self.dtype not in ("float32", "bfloat16"):
            raise TextEncoderError(f"T5Config.dtype must be float32 or bfloat16, got {self.dtype}")
        _parse_feed_forward_proj(self.feed_forward_proj)

    @property
    def is_gated(self) -> bool:
        return _parse_feed_forward_proj(self.feed_forward_proj)[0]

    @property
    def activation(self) -> str:
        """'relu', 'gelu_tanh', 'gelu' or 'silu'."""
        return _parse_feed_forward_proj(self.feed_forward_proj)[1]

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], dtype: str = "float32") -> T5Config:
        """Reads a Hugging Face T5 / mT5 `config.json` dict.

        Missing keys take HF's defaults. The activation comes from `feed_forward_proj` (HF's
        default "relu"), overridden by `is_gated_act` / `dense_act_fn` when the file has them,
        as HF's own loading does.
        """
        model_type = d.get("model_type", "t5")
        if model_type not in ("t5", "mt5"):
            raise TextEncoderError(f"model_type '{model_type}' is not a T5 encoder (t5 or mt5)")
        gated, act = _parse_feed_forward_proj(d.get("feed_forward_proj", "relu"))
        gated = bool(d.get("is_gated_act", gated))
        hf_act = d.get("dense_act_fn")
        if hf_act is not None:
            if hf_act not in _ACTIVATIONS:
                raise TextEncoderError(f"dense_act_fn '{hf_act}' is not a known activation")
            act = _ACTIVATIONS[hf_act]
        # Back to HF's spelling so that to_dict() round-trips through from_hf_dict().
        hf_name = {"gelu_tanh": "gelu_new"}.get(act, act)
        proj = "gated-gelu" if gated and act == "gelu_tanh" else (
            f"gated-{hf_name}" if gated else hf_name)
        values = {k: d.get(k, default) for k, default in _HF_DEFAULTS.items()}
        return cls(**values, feed_forward_proj=proj, dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def trainable_t5_config(width: int, num_layers: int, num_heads: int, mlp_dim: int,
                        vocab_size: int = 259, dtype: str = "float32") -> T5Config:
    """A small gated-GELU T5 encoder trained from scratch with the video transformer (ByT5 byte
    vocabulary by default); d_kv = width // num_heads."""
    if width % num_heads:
        raise TextEncoderError(f"text encoder width {width} is not divisible by "
                               f"{num_heads} heads")
    return T5Config(vocab_size=vocab_size, d_model=width, d_kv=width // num_heads, d_ff=mlp_dim,
                    num_layers=num_layers, num_heads=num_heads, feed_forward_proj="gated-gelu",
                    dtype=dtype)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def relative_position_bucket(relative_position: np.ndarray, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """T5's bidirectional relative-position buckets; relative_position = key - query.

    Half the buckets are for keys after the query (the upper half), half for keys at or before
    it. Within a half, distances below num_buckets / 4 get a bucket each; larger ones share
    log-spaced buckets up to `max_distance`, beyond which they all land in the last bucket.
    Computed in float32 like the reference implementations (Mesh TF, HF), so that distances on a
    log boundary fall on the same side.
    """
    rp = np.asarray(relative_position, np.int64)
    half = num_buckets // 2
    max_exact = half // 2
    n = np.abs(rp)
    log_ratio = np.log(np.maximum(n, max_exact).astype(np.float32) / np.float32(max_exact))
    large = max_exact + (log_ratio / np.float32(math.log(max_distance / max_exact))
                         * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return np.where(rp > 0, half, 0) + np.where(n < max_exact, n, large)


def _activation(name: str) -> Callable[[Array], Array]:
    return {"relu": jax.nn.relu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
            "gelu": lambda x: jax.nn.gelu(x, approximate=False), "silu": jax.nn.silu}[name]


# T5X's initialisers; they matter only for the encoder trained from scratch.
_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def _query_init(d_kv: int) -> Callable[..., Array]:
    """T5 does not scale attention logits by 1/sqrt(d_kv) at run time: the factor is folded
    into the query kernel's initial scale instead (equivalent at init)."""
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _kernel_init(key, shape, dtype) / math.sqrt(d_kv)

    return init


class T5LayerNorm(nn.Module):
    """T5's RMS norm: x / sqrt(mean(x^2) + eps) * scale; no mean subtraction, no bias. The
    statistics are taken in float32 whatever the compute dtype."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return y.astype(self.dtype) * scale.astype(self.dtype)


class RelativePositionBias(nn.Module):
    """The learned per-head bias of T5's attention logits: [1, heads, q_len, k_len] float32."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> Array:
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), ("heads", None)),
            (self.num_heads, self.num_buckets), jnp.float32)
        # Lengths are static, so the bucket of every (query, key) pair is a trace-time constant.
        buckets = relative_position_bucket(np.arange(k_len)[None, :] - np.arange(q_len)[:, None],
                                           self.num_buckets, self.max_distance)
        return jnp.take(table, jnp.asarray(buckets, jnp.int32), axis=1)[None]


class T5Attention(nn.Module):
    """T5 self-attention over x [B, L, D]: no biases, no 1/sqrt(d_kv) scaling, relative
    position `bias` [1, H, L, L] added to the logits, padded keys (`key_mask` [B, L]) ignored."""

    num_heads: int
    d_kv: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array, key_mask: Array) -> Array:
        def proj(name: str, init: Callable[..., Array]) -> Array:
            return Projection((self.num_heads, self.d_kv), (-1,), ("embed", "heads", "kv"),
                              self.dtype, init, name=name)(x)

        q = proj("query", _query_init(self.d_kv))
        k = proj("key", _kernel_init)
        v = proj("value", _kernel_init)
        # Logits and softmax in float32: the bias and the mask would lose too much in bfloat16.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits + bias
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return Projection((x.shape[-1],), (-2, -1), ("heads", "kv", "embed"), self.dtype,
                          _kernel_init, name="out")(out)


class T5Mlp(nn.Module):
    """wo(act(wi_0 x) * wi_1 x) when gated (T5 v1.1), wo(act(wi x)) otherwise (T5 v1.0)."""

    d_ff: int
    gated: bool
    activation: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def dense(name: str, features: int, axes: tuple[str, str], inputs: Array) -> Array:
            return nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=nn.with_logical_partitioning(_kernel_init, axes),
                            name=name)(inputs)

        act = _activation(self.activation)
        if self.gated:
            h = act(dense("wi_0", self.d_ff, ("embed", "mlp"), x)) * dense(
                "wi_1", self.d_ff, ("embed", "mlp"), x)
        else:
            h = act(dense("wi", self.d_ff, ("embed", "mlp"), x))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return dense("wo", x.shape[-1], ("mlp", "embed"), h)


class T5EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, bias: Array, key_mask: Array) -> Array:
        cfg = self.config
        dtype = dtype_of(cfg.dtype)
        h = T5LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
        x = x + T5Attention(cfg.num_heads, cfg.d_kv, dtype, name="attention")(h, bias, key_mask)
        h = T5LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        x = x + T5Mlp(cfg.d_ff, cfg.is_gated, cfg.activation, dtype, name="mlp")(h)
        return nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))


class T5Encoder(nn.Module):
    """T5's encoder stack (parameter tree in the module docstring).

    `__call__(ids int32 [B, L], mask [B, L] (1 real, 0 pad; default ids != 0))` returns the last
    hidden state after the final layer norm, float32 [B, L, d_model]. As in Hugging Face's T5
    only keys are masked, so rows at padded positions hold values nobody should read; the mask
    says which rows are real. The embedding is not scaled; no dropout (inference, or a small
    encoder trained with the transformer).
    """

    config: T5Config

    @nn.compact
    def __call__(self, ids: Array, mask: Array | None = None) -> Array:
        cfg = self.config
        dtype = dtype_of(cfg.dtype)
        key_mask = (ids != PAD_ID) if mask is None else mask.astype(bool)
        x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                 ("vocab", "embed")),
                     name="token_embedder")(ids.astype(jnp.int32))
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
        # Computed once and shared by every layer, as in T5.
        bias = RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance,
                                    name="relpos_bias")(ids.shape[1], ids.shape[1])
        for i in range(cfg.num_layers):
            x = T5EncoderLayer(cfg, name=f"layers_{i}")(x, bias, key_mask)
        x = T5LayerNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)
        return x.astype(jnp.float32)


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """{"layers_0/attention/query/kernel": shape, ...}: every parameter of `T5Encoder(config)`."""
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    tree = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), ids)["params"]
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}
