"""Where the masked transformer's text embeddings come from, and the host side of its text.

Three sources:
  * `trainable`: a small T5 encoder over UTF-8 bytes, trained with the transformer (its
    parameters are in `state.params["text"]`);
  * `frozen`: a pretrained T5 (Hugging Face or T5X checkpoint), frozen in `state.aux["text"]`
    in `text.frozen_dtype` (bfloat16 halves a T5-XXL's 19 GB); checkpoints leave it out and
    store where it came from and its `fingerprint`;
  * `embeddings`: given in the batch, from a phenaki-embed cache looked up by caption
    (training) or random (phenaki-bench).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from phenaki_jax import storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data.embedding_cache import CacheMiss, EmbeddingCache
from phenaki_jax.models import t5

Array = jax.Array
SOURCES = ("trainable", "frozen", "embeddings")


class TextInputs:
    """The text side of a transformer config, for one source (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, source: str,
                 cache: EmbeddingCache | None = None,
                 keep_t5: bool = False) -> None:
        """`keep_t5`: with `embeddings` from a cache, the T5 that wrote them is still kept
        frozen in the state, so that inference can encode new prompts."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        self.text = config.text
        self.source = source
        self.cache = cache
        self.model: t5.T5Encoder | None = None
        self.tokenizer: Any = None
        t = config.text
        if source == "trainable":
            self.tokenizer = t5.ByteTokenizer()
            # 259 byte ids, padded to 384 rows so the embedding splits over a model axis.
            vocab = -(-self.tokenizer.vocab_size // 128) * 128
            self.model = t5.T5Encoder(t5.trainable_t5_config(
                t.embed_dim, t.num_layers, t.num_heads, t.mlp_dim, vocab_size=vocab))
        elif source == "frozen" or keep_t5:
            t5_config, vocabulary = _t5_files(t)
            self.model = t5.T5Encoder(t5_config)
            self.tokenizer = t5.SentencePieceTokenizer(vocabulary)

    @classmethod
    def for_training(cls, config: ml_collections.ConfigDict) -> TextInputs:
        """The trainable encoder, or a frozen T5, or (with `text.cache`) its cached output."""
        if config.text.encoder == "trainable":
            return cls(config, "trainable")
        _check_t5(config.text)
        if config.text.cache:
            t = config.text
            return cls(config, "embeddings", EmbeddingCache(t.cache, t.max_length, t.embed_dim),
                       keep_t5=True)
        return cls(config, "frozen")

    @classmethod
    def for_inference(cls, config: ml_collections.ConfigDict) -> TextInputs:
        """What turns a prompt into embeddings at inference: the trained or frozen encoder."""
        if config.text.encoder == "trainable":
            return cls(config, "trainable")
        _check_t5(config.text)
        return cls(config, "frozen")

    @classmethod
    def for_benchmark(cls, config: ml_collections.ConfigDict) -> TextInputs:
        """No checkpoint: the trainable encoder, or random embeddings standing for a T5's."""
        return cls(config, "trainable" if config.text.encoder == "trainable" else "embeddings")

    # -- host side ------------------------------------------------------------------------
    def batch_axes(self) -> dict[str, tuple[str, ...]]:
        axes: dict[str, tuple[str, ...]] = {"text_mask": ("batch", "text_length")}
        if self.source == "embeddings":
            axes["text_embeddings"] = ("batch", "text_length", "text_embed")
        else:
            axes["text_ids"] = ("batch", "text_length")
        return axes

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """ids, mask int32 [N, text.max_length] and the indices of the truncated texts."""
        return self.tokenizer.encode_batch(texts, self.text.max_length)

    def host_arrays(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The batch's text arrays for these captions (over-long ones truncated, with a
        warning; a caption missing from the cache is an error naming it)."""
        if self.source == "embeddings":
            if self.cache is None:
                raise ValueError("random embeddings have no captions (phenaki-bench)")
            try:
                emb, mask = self.cache.lookup(texts)
            except CacheMiss as e:
                raise ConfigError(
                    f"text {e.args[0]!r} is not in config.text.cache={self.text.cache}; "
                    "embed every caption of the data set with phenaki-embed") from None
            return {"text_embeddings": emb, "text_mask": mask}
        ids, mask, truncated = self.tokenize(texts)
        if truncated:
            logging.warning("%d text(s) longer than config.text.max_length=%d were truncated, "
                            "e.g. %r", len(truncated), self.text.max_length,
                            texts[truncated[0]][:80])
        return {"text_ids": ids, "text_mask": mask}

    def example_arrays(self, batch_size: int) -> dict[str, Array]:
        length = self.text.max_length
        out = {"text_mask": jnp.ones((batch_size, length), jnp.int32)}
        if self.source == "embeddings":
            out["text_embeddings"] = jnp.zeros((batch_size, length, self.text.embed_dim),
                                               jnp.float32)
        else:
            out["text_ids"] = jnp.ones((batch_size, length), jnp.int32)
        return out

    def random_arrays(self, batch_size: int, rng: np.random.Generator
                      ) -> dict[str, np.ndarray]:
        """Random text of the right shapes (phenaki-bench)."""
        length = self.text.max_length
        out = {"text_mask": np.ones((batch_size, length), np.int32)}
        if self.source == "embeddings":
            out["text_embeddings"] = rng.standard_normal(
                (batch_size, length, self.text.embed_dim)).astype(np.float32)
        else:
            out["text_ids"] = rng.integers(3, 259, (batch_size, length)).astype(np.int32)
        return out

    # -- device side ----------------------------------------------------------------------
    def init(self, rng: Array) -> tuple[dict[str, Any], dict[str, Any]]:
        """(params part, aux part): {"text": ...} in the params if trainable, in the aux if
        a T5 is kept frozen."""
        if self.model is None:
            return {}, {}
        ids = jnp.ones((1, self.text.max_length), jnp.int32)
        mask = jnp.ones((1, self.text.max_length), jnp.int32)
        params = self.model.init(rng, ids, mask)["params"]
        if self.source == "trainable":
            return {"text": params}, {}
        dtype = jnp.dtype(self.frozen_dtype)
        return {}, {"text": jax.tree.map(lambda x: x.astype(dtype), params)}

    @property
    def frozen(self) -> bool:
        """A pretrained T5 rides frozen in the state's aux (alone, or beside a cache)."""
        return self.model is not None and self.source != "trainable"

    @property
    def frozen_dtype(self) -> str:
        return self.text.get("frozen_dtype", "float32")

    def load_frozen(self) -> Any:  # noqa: ANN401
        """The pretrained T5's parameters (for `aux["text"]`), in `text.frozen_dtype`."""
        return t5.load_t5(t5_directory(self.text), self.frozen_dtype)[1]

    def encode(self, params: Any, aux: Any, batch: dict[str, Array]  # noqa: ANN401
               ) -> tuple[Array, Array]:
        """(context [B, L, D], mask [B, L]) from whichever text input the batch carries."""
        if "text_embeddings" in batch:
            return batch["text_embeddings"], batch["text_mask"]
        if self.source == "trainable":
            text_params = params["text"]
        else:
            text_params = jax.lax.stop_gradient(aux["text"])
        emb = self.model.apply({"params": text_params}, batch["text_ids"], batch["text_mask"])
        return emb, batch["text_mask"]


def fingerprint(directory: str) -> str:
    """A T5 checkpoint directory's identity: sha256 over every file's path and size and its
    first and last MiB. Cheap on a 19 GB T5-XXL, and another checkpoint (another size, another
    download, a re-saved file) differs."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            h.update(f"{os.path.relpath(path, directory)}\0{size}\0".encode())
            with open(path, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(-(1 << 20), os.SEEK_END)
                    h.update(f.read())
    return h.hexdigest()[:16]


def _check_t5(t: ml_collections.ConfigDict) -> None:
    """The files `text.encoder='t5'` names exist and agree with the config."""
    if not t.checkpoint:
        raise ConfigError("config.text.checkpoint is empty; text.encoder='t5' needs a Hugging "
                          "Face or T5X checkpoint directory")
    if not storage.isdir(t.checkpoint):
        raise ConfigError(f"config.text.checkpoint={t.checkpoint} does not exist")
    if t.cache and not storage.exists(t.cache):
        raise ConfigError(f"config.text.cache={t.cache} does not exist")
    if t.vocabulary and not storage.isfile(t.vocabulary):
        raise ConfigError(f"config.text.vocabulary={t.vocabulary} does not exist")
    hf_config = storage.join(t.checkpoint, "config.json")
    if storage.isfile(hf_config):
        d_model = json.loads(storage.read_text(hf_config)).get("d_model")
        if d_model != t.embed_dim:
            raise ConfigError(f"config.text.embed_dim={t.embed_dim} differs from the T5 width "
                              f"{d_model} in {hf_config}")
        if not t.vocabulary and not storage.isfile(storage.join(t.checkpoint, "spiece.model")):
            raise ConfigError(f"config.text.checkpoint={t.checkpoint} has no spiece.model; set "
                              "config.text.vocabulary")
    elif not t.vocabulary:
        raise ConfigError("config.text.vocabulary must name the sentencepiece model of the T5X "
                          f"checkpoint in {t.checkpoint}")


def t5_directory(t: ml_collections.ConfigDict) -> str:
    """The T5 checkpoint on local disk (a gs:// one is fetched once; see `storage.local_dir`)."""
    return storage.local_dir(t.checkpoint)


def _t5_files(t: ml_collections.ConfigDict) -> tuple[t5.T5Config, str]:
    """(the T5's config, its sentencepiece model's path)."""
    directory = t5_directory(t)
    hf_config = os.path.join(directory, "config.json")
    if os.path.isfile(hf_config):
        with open(hf_config) as f:
            cfg = t5.T5Config.from_hf_dict(json.load(f))
    else:  # a T5X checkpoint carries no config: its sizes come from the arrays
        cfg, _ = t5.load_t5(directory)
    vocabulary = storage.local_file(t.vocabulary) if t.vocabulary else os.path.join(
        directory, "spiece.model")
    return cfg, vocabulary
