"""The T5 text encoder: a Flax port, checkpoint loaders and the matching tokenizers.

Phenaki conditions the video transformer on T5X embeddings of the prompt. This module has
  * `T5Config` and `T5Encoder`: the encoder stack of T5 (v1.0 "relu" and v1.1 "gated-gelu"),
    returning the last hidden state after the final RMS layer norm, float32 [B, L, d_model].
  * `load_hf_t5`, `load_t5x` and `load_t5` (which detects the layout): a pretrained encoder as
    `(T5Config, params)`, params being a nested dict of float32 numpy arrays in `T5Encoder`'s
    tree. Decoder weights and optimizer state are never read.
  * `SentencePieceTokenizer` (seqio's vocabulary + EOS) and `ByteTokenizer` (ByT5's ids, for
    an encoder trained from scratch); `trainable_t5_config` sizes such an encoder.

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

import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phenaki_jax.models.layers import dtype_of

Array = jax.Array
Params = dict[str, Any]

PAD_ID = 0  # T5 and ByT5 pad with 0; seqio pads every feature with 0 too
EOS_ID = 1


class TextEncoderError(ValueError):
    """A missing, unreadable or inconsistent text-encoder checkpoint or vocabulary; the message
    is one line naming the file (and the tensor)."""


def _one_line(error: BaseException) -> str:
    """An underlying library's message, squeezed onto one line for ours."""
    return " ".join(str(error).split())


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
            return nn.DenseGeneral(
                (self.num_heads, self.d_kv), use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, name=name,
                kernel_init=nn.with_logical_partitioning(init, ("embed", "heads", "kv")))(x)

        q = proj("query", _query_init(self.d_kv))
        k = proj("key", _kernel_init)
        v = proj("value", _kernel_init)
        # Logits and softmax in float32: the bias and the mask would lose too much in bfloat16.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits + bias
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(
            x.shape[-1], axis=(-2, -1), use_bias=False, dtype=self.dtype,
            param_dtype=jnp.float32, name="out",
            kernel_init=nn.with_logical_partitioning(_kernel_init, ("heads", "kv", "embed")))(out)


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
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


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
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
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


def _unflatten(flat: Mapping[str, np.ndarray]) -> Params:
    tree: Params = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# --------------------------------------------------------------------------------------------
# Checkpoint loaders
# --------------------------------------------------------------------------------------------

def _check_shape(array: np.ndarray, expected: tuple[int, ...], tensor: str, where: str) -> None:
    if tuple(array.shape) != tuple(expected):
        raise TextEncoderError(f"{where}: tensor '{tensor}' has shape {tuple(array.shape)}, "
                               f"expected {tuple(expected)}")


class _SafetensorsFiles:
    """Tensors of a HF checkpoint by name: `model.safetensors` or its sharded index. Reads only
    the tensors asked for (the decoder of a large T5 is never loaded)."""

    def __init__(self, directory: str, stack: contextlib.ExitStack) -> None:
        single = os.path.join(directory, "model.safetensors")
        index = os.path.join(directory, "model.safetensors.index.json")
        self._stack = stack
        self._handles: dict[str, Any] = {}
        if os.path.isfile(single):
            self.source = single
            self._handles[single] = self._open(single, stack)
            self._where = {k: single for k in self._handles[single].keys()}
        elif os.path.isfile(index):
            self.source = index
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise TextEncoderError(f"{index}: not a safetensors index ({_one_line(e)})") from e
            self._where = {k: os.path.join(directory, v) for k, v in weight_map.items()}
        else:
            hint = (" (pytorch_model.bin is not read: save the model with safetensors)"
                    if os.path.exists(os.path.join(directory, "pytorch_model.bin")) else "")
            raise TextEncoderError(f"{directory}: no model.safetensors or "
                                   f"model.safetensors.index.json{hint}")

    @staticmethod
    def _open(path: str, stack: contextlib.ExitStack) -> Any:
        from safetensors import SafetensorError, safe_open

        if not os.path.isfile(path):
            raise TextEncoderError(f"{path}: safetensors shard not found")
        try:
            return stack.enter_context(safe_open(path, framework="np"))
        except (SafetensorError, OSError, ValueError) as e:
            raise TextEncoderError(f"{path}: not a readable safetensors file "
                                   f"({_one_line(e)})") from e

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self._where.get(name)
        if path is None:
            raise TextEncoderError(f"{self.source}: missing tensor '{name}'")
        if path not in self._handles:
            self._handles[path] = self._open(path, self._stack)
        array = self._handles[path].get_tensor(name)
        _check_shape(array, shape, name, path)
        # A copy: the tensor may view the file's buffer, which the caller's ExitStack releases.
        return np.array(array, np.float32)


def load_hf_t5(directory: str, dtype: str = "float32") -> tuple[T5Config, Params]:
    """A Hugging Face T5 / T5 v1.1 / mT5 checkpoint directory -> (config, encoder params).

    Reads `config.json` and `model.safetensors` (or the shards of
    `model.safetensors.index.json`). torch Linear weights are [out, in] and are transposed;
    attention kernels are split by head. Decoder and LM-head tensors are ignored.
    """
    config_path = os.path.join(directory, "config.json")
    try:
        with open(config_path) as f:
            hf = json.load(f)
    except FileNotFoundError as e:
        raise TextEncoderError(f"{directory}: no config.json") from e
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"{config_path}: not a readable JSON file ({_one_line(e)})") from e
    if not isinstance(hf, dict):
        raise TextEncoderError(f"{config_path}: not a JSON object")
    try:
        config = T5Config.from_hf_dict(hf, dtype=dtype)
    except TextEncoderError as e:
        raise TextEncoderError(f"{config_path}: {e}") from e
    c = config
    hk = c.num_heads * c.d_kv
    flat: dict[str, np.ndarray] = {}
    with contextlib.ExitStack() as stack:
        files = _SafetensorsFiles(directory, stack)
        embed = ("encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in files
                 else "shared.weight")
        flat["token_embedder/embedding"] = files.get(embed, (c.vocab_size, c.d_model))
        flat["relpos_bias/rel_embedding"] = files.get(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (c.relative_attention_num_buckets, c.num_heads)).T
        for i in range(c.num_layers):
            hf_layer, ours = f"encoder.block.{i}.layer", f"layers_{i}"
            att = f"{hf_layer}.0.SelfAttention"
            flat[f"{ours}/pre_attention_layer_norm/scale"] = files.get(
                f"{hf_layer}.0.layer_norm.weight", (c.d_model,))
            for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value")):
                flat[f"{ours}/attention/{name}/kernel"] = files.get(
                    f"{att}.{hf_name}.weight", (hk, c.d_model)).T.reshape(
                        c.d_model, c.num_heads, c.d_kv)
            flat[f"{ours}/attention/out/kernel"] = files.get(
                f"{att}.o.weight", (c.d_model, hk)).T.reshape(c.num_heads, c.d_kv, c.d_model)
            flat[f"{ours}/pre_mlp_layer_norm/scale"] = files.get(
                f"{hf_layer}.1.layer_norm.weight", (c.d_model,))
            mlp = f"{hf_layer}.1.DenseReluDense"
            for name in (("wi_0", "wi_1") if c.is_gated else ("wi",)):
                flat[f"{ours}/mlp/{name}/kernel"] = files.get(
                    f"{mlp}.{name}.weight", (c.d_ff, c.d_model)).T
            flat[f"{ours}/mlp/wo/kernel"] = files.get(f"{mlp}.wo.weight", (c.d_model, c.d_ff)).T
        flat["encoder_norm/scale"] = files.get("encoder.final_layer_norm.weight", (c.d_model,))
        extra = f"encoder.block.{c.num_layers}.layer.0.layer_norm.weight"
        if extra in files:
            raise TextEncoderError(f"{files.source}: has more encoder blocks than config.json's "
                                   f"num_layers={c.num_layers}")
    # Transposed views -> contiguous arrays, so that device transfer does not copy twice.
    return config, _unflatten({k: np.ascontiguousarray(v) for k, v in flat.items()})


_PLACEHOLDER_PREFIX = "PLACEHOLDER://"  # orbax's msgpack stand-in for an array stored apart


def _t5x_checkpoint_dir(directory: str) -> str:
    """The directory itself if it holds a `checkpoint` file, else its latest checkpoint_N."""
    if os.path.isfile(os.path.join(directory, "checkpoint")):
        return directory
    steps = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            m = re.fullmatch(r"checkpoint_(\d+)", name)
            if m and os.path.isfile(os.path.join(directory, name, "checkpoint")):
                steps.append(int(m.group(1)))
    if not steps:
        raise TextEncoderError(f"{directory}: no T5X `checkpoint` file (nor checkpoint_N/ "
                               f"directories holding one)")
    return os.path.join(directory, f"checkpoint_{max(steps)}")


def _read_tensorstore(path: str, driver: str | None, tensor: str) -> np.ndarray:
    """Reads a whole zarr (v2 or v3) array written by T5X / orbax with tensorstore."""
    import tensorstore as ts

    if driver is None:
        driver = "zarr3" if os.path.isfile(os.path.join(path, "zarr.json")) else "zarr"
    if driver not in ("zarr", "zarr3"):
        raise TextEncoderError(f"{path}: tensor '{tensor}' uses tensorstore driver '{driver}'; "
                               f"only zarr arrays are read")
    if not os.path.isdir(path):
        raise TextEncoderError(f"{path}: missing tensorstore array of tensor '{tensor}'")
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": path}}
    try:
        return np.asarray(ts.open(spec, open=True, read=True).result().read().result())
    except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError/RuntimeError variants
        raise TextEncoderError(f"{path}: cannot read tensor '{tensor}': {_one_line(e)}") from e


class _T5XTree:
    """Resolves leaves of a T5X checkpoint's `target` tree: arrays inline in the msgpack file,
    or stored apart by tensorstore and referred to by a spec dict (T5X's Checkpointer: the
    kvstore path is relative to the checkpoint directory) or by a placeholder string (orbax:
    'PLACEHOLDER://name', or the bare name)."""

    def __init__(self, directory: str) -> None:
        from flax import serialization

        self.directory = _t5x_checkpoint_dir(directory)
        self.file = os.path.join(self.directory, "checkpoint")
        try:
            with open(self.file, "rb") as f:
                contents = serialization.msgpack_restore(f.read())
        except OSError as e:
            raise TextEncoderError(f"{self.file}: cannot read ({_one_line(e)})") from e
        except Exception as e:  # noqa: BLE001 - msgpack raises many types on garbage
            raise TextEncoderError(f"{self.file}: not a T5X msgpack checkpoint "
                                   f"({type(e).__name__}: {_one_line(e)})") from e
        if not isinstance(contents, dict):
            raise TextEncoderError(f"{self.file}: not a T5X msgpack checkpoint")
        # {"version": 3, "optimizer": {"target": params, "state": ...}} since 2021; a bare
        # flax state dict {"target": ...} (version 0) before; accept params at the root too.
        self.prefix: list[str] = []
        tree: Any = contents
        for key in ("optimizer", "target"):
            if isinstance(tree, dict) and isinstance(tree.get(key), dict):
                tree, self.prefix = tree[key], [*self.prefix, key]
        self.tree = tree
        self._cache: dict[str, tuple[np.ndarray, str]] = {}

    def name(self, path: str) -> str:
        return "/".join([*self.prefix, path])

    def node(self, path: str) -> Any:
        """The subtree or leaf at `path` (below target/), or None."""
        node: Any = self.tree
        for part in path.split("/"):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def get(self, path: str, *shapes: tuple[int, ...]) -> np.ndarray:
        """The tensor at `path` (below target/) as float32; if `shapes` are given, its shape
        must be one of them."""
        leaf, tensor = self.node(path), self.name(path)
        if leaf is None:
            raise TextEncoderError(f"{self.file}: missing tensor '{tensor}'")
        where = self.file
        if path in self._cache:  # sizing the config reads a few tensors before the full load
            array, where = self._cache[path]
        elif isinstance(leaf, np.ndarray):
            array = leaf
        elif isinstance(leaf, str):
            relative = leaf[len(_PLACEHOLDER_PREFIX):] if leaf.startswith(
                _PLACEHOLDER_PREFIX) else leaf
            where = os.path.join(self.directory, relative)
            array = _read_tensorstore(where, None, tensor)
        elif isinstance(leaf, dict) and "driver" in leaf:
            kvstore = leaf.get("kvstore")
            relative = kvstore.get("path") if isinstance(kvstore, dict) else leaf.get("path")
            if not isinstance(relative, str):
                raise TextEncoderError(f"{self.file}: tensor '{tensor}' has a tensorstore spec "
                                       f"without a path")
            where = os.path.join(self.directory, relative)
            array = _read_tensorstore(where, leaf["driver"], tensor)
        else:
            raise TextEncoderError(f"{self.file}: tensor '{tensor}' is neither an array nor a "
                                   f"tensorstore reference ({type(leaf).__name__})")
        array = np.asarray(array, np.float32)
        self._cache[path] = (array, where)
        if shapes and tuple(array.shape) not in [tuple(s) for s in shapes]:
            _check_shape(array, shapes[0], tensor, where)
        return array


def load_t5x(directory: str, dtype: str = "float32", relative_attention_max_distance: int = 128,
             layer_norm_epsilon: float = 1e-6) -> tuple[T5Config, Params]:
    """A T5X checkpoint directory (holding the msgpack `checkpoint` file, or a model dir whose
    latest checkpoint_N is taken) -> (config, encoder params).

    T5X checkpoints carry no config, so the sizes are inferred from the arrays: vocab_size and
    d_model from token_embedder/embedding, num_heads and the bucket count from
    encoder/relpos_bias/rel_embedding [heads, buckets], d_kv from the query kernel
    [d_model, heads * d_kv], d_ff from mlp/wo, num_layers by counting encoder/layers_{i}, and
    gated-GELU (v1.1) vs ReLU (v1.0) by whether mlp/wi_0 exists. The maximum distance and the
    norm epsilon are not stored: T5X's defaults (128, 1e-6) unless given. T5X kernels are
    already [in, out]; the query kernel holds the 1/sqrt(d_kv) factor from its initialisation
    just as HF's does, so weights are used unchanged.
    """
    if not os.path.isdir(directory):
        raise TextEncoderError(f"T5X checkpoint directory not found: {directory}")
    t = _T5XTree(directory)
    embed_path = ("token_embedder/embedding" if t.node("token_embedder/embedding") is not None
                  else "encoder/token_embedder/embedding")
    embedding = t.get(embed_path)
    rel = t.get("encoder/relpos_bias/rel_embedding")
    query = t.get("encoder/layers_0/attention/query/kernel")
    for array, path, rank in ((embedding, embed_path, (2,)),
                              (rel, "encoder/relpos_bias/rel_embedding", (2,)),
                              (query, "encoder/layers_0/attention/query/kernel", (2, 3))):
        if array.ndim not in rank:
            raise TextEncoderError(f"{t.file}: tensor '{t.name(path)}' has shape {array.shape}; "
                                   f"expected rank {' or '.join(map(str, rank))}")
    vocab_size, d_model = embedding.shape
    num_heads, num_buckets = rel.shape
    if query.ndim == 3:
        d_kv = query.shape[2]
    elif query.shape[1] % num_heads:
        raise TextEncoderError(f"{t.file}: query kernel width {query.shape[1]} of "
                               f"'{t.name('encoder/layers_0/attention/query/kernel')}' is not a "
                               f"multiple of the {num_heads} heads of relpos_bias")
    else:
        d_kv = query.shape[1] // num_heads
    gated = t.node("encoder/layers_0/mlp/wi_0") is not None
    wo = t.get("encoder/layers_0/mlp/wo/kernel")
    if wo.ndim != 2:
        raise TextEncoderError(f"{t.file}: tensor '{t.name('encoder/layers_0/mlp/wo/kernel')}' "
                               f"has shape {wo.shape}; expected [d_ff, d_model]")
    num_layers = 0
    while t.node(f"encoder/layers_{num_layers}") is not None:
        num_layers += 1
    config = T5Config(vocab_size=int(vocab_size), d_model=int(d_model), d_kv=int(d_kv),
                      d_ff=int(wo.shape[0]), num_layers=num_layers, num_heads=int(num_heads),
                      relative_attention_num_buckets=int(num_buckets),
                      relative_attention_max_distance=relative_attention_max_distance,
                      layer_norm_epsilon=layer_norm_epsilon,
                      feed_forward_proj="gated-gelu" if gated else "relu", dtype=dtype)

    flat: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(config).items():
        source = embed_path if name == "token_embedder/embedding" else f"encoder/{name}"
        if name.endswith(("query/kernel", "key/kernel", "value/kernel", "out/kernel")):
            # T5X stores [d_model, heads * d_kv] (out: [heads * d_kv, d_model]); split by head.
            flat_shape = ((shape[0], shape[1] * shape[2]) if not name.endswith("out/kernel")
                          else (shape[0] * shape[1], shape[2]))
            flat[name] = t.get(source, flat_shape, shape).reshape(shape)
        else:
            flat[name] = t.get(source, shape)
    return config, _unflatten(flat)


def load_t5(directory: str, dtype: str = "float32") -> tuple[T5Config, Params]:
    """A pretrained T5 encoder from a Hugging Face directory (`config.json` + safetensors) or a
    T5X checkpoint directory (a msgpack `checkpoint` file); see `load_hf_t5` / `load_t5x`."""
    if not os.path.isdir(directory):
        raise TextEncoderError(f"T5 checkpoint directory not found: {directory}")
    if os.path.isfile(os.path.join(directory, "config.json")):
        return load_hf_t5(directory, dtype)
    try:
        _t5x_checkpoint_dir(directory)
    except TextEncoderError:
        raise TextEncoderError(
            f"{directory}: not a T5 checkpoint: no config.json (Hugging Face, with "
            f"model.safetensors) and no T5X `checkpoint` file") from None
    return load_t5x(directory, dtype)


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

def pack_ids(pieces: Sequence[Sequence[int]], max_length: int, eos_id: int = EOS_ID,
             pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """seqio's append-EOS-after-trim: each row is its first max_length - 1 ids, then EOS, then
    pad_id up to max_length. Returns (ids int32 [N, L], mask int32 [N, L], indices of rows that
    were truncated)."""
    if max_length < 1:
        raise TextEncoderError(f"max_length must be >= 1 (room for EOS), got {max_length}")
    ids = np.full((len(pieces), max_length), pad_id, np.int32)
    mask = np.zeros((len(pieces), max_length), np.int32)
    truncated = []
    for i, row in enumerate(pieces):
        row = list(row)
        if len(row) > max_length - 1:
            row = row[:max_length - 1]
            truncated.append(i)
        row.append(eos_id)
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask, truncated


class SentencePieceTokenizer:
    """A sentencepiece model (T5's `spiece.model`) as seqio's SentencePieceVocabulary with
    EOS appended: pieces, EOS, then 0 padding."""

    def __init__(self, path: str) -> None:
        import sentencepiece as spm

        if not os.path.isfile(path):
            raise TextEncoderError(f"sentencepiece model not found: {path}")
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise TextEncoderError(f"{path}: not a sentencepiece model ({_one_line(e)})") from e
        self.vocab_size = int(self._sp.get_piece_size())
        self.eos_id = int(self._sp.eos_id())
        if self.eos_id < 0:
            raise TextEncoderError(f"{path}: the sentencepiece model defines no EOS piece")
        self.pad_id = PAD_ID

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, without EOS."""
        return self._sp.encode(list(texts), out_type=int)

    def encode_batch(self, texts: Sequence[str],
                     max_length: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(ids int32 [N, L], mask int32 [N, L], indices of truncated texts); see `pack_ids`."""
        return pack_ids(self.encode(texts), max_length, self.eos_id, self.pad_id)


class ByteTokenizer:
    """ByT5's ids for the text encoder trained from scratch: UTF-8 byte b -> b + 3 (0 pad,
    1 EOS, 2 unknown); 259 ids."""

    vocab_size = 259
    eos_id = EOS_ID
    pad_id = PAD_ID
    unk_id = 2
    _offset = 3

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [[b + self._offset for b in text.encode("utf-8")] for text in texts]

    def encode_batch(self, texts: Sequence[str],
                     max_length: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(ids int32 [N, L], mask int32 [N, L], indices of truncated texts); see `pack_ids`."""
        return pack_ids(self.encode(texts), max_length, self.eos_id, self.pad_id)

