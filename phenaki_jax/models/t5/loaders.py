"""Pretrained T5 encoders from disk: Hugging Face (safetensors) and T5X (tensorstore)
checkpoints, as `(T5Config, params)` with params a nested dict of numpy arrays in
`T5Encoder`'s tree. Decoder weights and optimizer state are never read."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from phenaki_jax.models.t5.errors import TextEncoderError, one_line
from phenaki_jax.models.t5.model import T5Config, param_shapes

Params = dict[str, Any]


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
                raise TextEncoderError(f"{index}: not a safetensors index ({one_line(e)})") from e
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
                                   f"({one_line(e)})") from e

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
        raise TextEncoderError(f"{config_path}: not a readable JSON file ({one_line(e)})") from e
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
        raise TextEncoderError(f"{path}: cannot read tensor '{tensor}': {one_line(e)}") from e


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
            raise TextEncoderError(f"{self.file}: cannot read ({one_line(e)})") from e
        except Exception as e:  # noqa: BLE001 - msgpack raises many types on garbage
            raise TextEncoderError(f"{self.file}: not a T5X msgpack checkpoint "
                                   f"({type(e).__name__}: {one_line(e)})") from e
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
