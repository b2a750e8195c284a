"""Text embeddings looked up by caption: phenaki-embed's output, one .npz or a sharded directory.

One `.npz` holds `prompts` [N], `embeddings` float32 [N, L, D], `mask` int32 [N, L] (and
`ids`), and is read whole. A sharded cache is a directory: `cache.json`
(`{"format": SHARDED_FORMAT, "num_shards": S, "count": N, "max_length": L, "embed_dim": D}`,
written last) and `shard-00000.npz` ... `shard-{S-1}.npz`, each holding the captions whose
`shard_of(caption, S)` is its index. A lookup opens the shard a caption lives in when first
needed and keeps the `max_open` most recently used ones: memory is bounded by the shard size,
not by the caption set (a T5-XXL embedding of 128 tokens is about 2 MiB). Either form may be
on gs:// (`storage`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from phenaki_jax import storage
from phenaki_jax.config import ConfigError

SHARDED_FORMAT = "phenaki-embed/sharded-v1"
INDEX_FILE = "cache.json"


class CacheMiss(KeyError):
    """A caption the cache does not hold."""


def shard_of(caption: str, num_shards: int) -> int:
    """The shard a caption lives in: a hash of its UTF-8 bytes, the same in every process."""
    digest = hashlib.sha1(caption.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def write_npz(path: str, prompts: Sequence[str], ids: np.ndarray, mask: np.ndarray,
              embeddings: np.ndarray) -> None:
    """One cache file (or one shard), atomically."""
    with storage.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, mask=mask, embeddings=embeddings.astype(np.float32),
                 prompts=np.array(list(prompts), np.str_))


def write_index(directory: str, num_shards: int, count: int, max_length: int,
                embed_dim: int) -> None:
    """`cache.json`, the last file a sharded cache gets: without it the cache is unfinished."""
    storage.write_text(storage.join(directory, INDEX_FILE), json.dumps(
        {"format": SHARDED_FORMAT, "num_shards": num_shards, "count": count,
         "max_length": max_length, "embed_dim": embed_dim}, indent=2))


class EmbeddingCache:
    """Looks captions up in a phenaki-embed cache, fitted to `max_length` tokens of width
    `embed_dim` (shorter rows padded, longer ones cut); `name` is how errors name it."""

    def __init__(self, path: str, max_length: int, embed_dim: int,
                 name: str = "config.text.cache", max_open: int = 8) -> None:
        self.path, self.max_length, self.embed_dim, self.name = path, max_length, embed_dim, name
        self.max_open = max_open
        self._open: collections.OrderedDict[int, tuple[dict[str, int], np.ndarray,
                                                       np.ndarray]] = collections.OrderedDict()
        index_path = storage.join(path, INDEX_FILE)
        if storage.isdir(path):
            if not storage.isfile(index_path):
                raise ConfigError(f"{name}={path} is a directory without {INDEX_FILE}: not a "
                                  "finished sharded phenaki-embed cache")
            index = json.loads(storage.read_text(index_path))
            if index.get("format") != SHARDED_FORMAT:
                raise ConfigError(f"{name}={path}/{INDEX_FILE} is not a {SHARDED_FORMAT} index")
            if index["embed_dim"] != embed_dim:
                raise ConfigError(f"{name}={path} holds embeddings of width "
                                  f"{index['embed_dim']}, but config.text.embed_dim={embed_dim}")
            self.num_shards: int | None = int(index["num_shards"])
        else:
            self.num_shards = None
            self._open[0] = self._read(path)

    def _read(self, path: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        with storage.open_file(path) as raw, np.load(raw) as f:
            missing = [k for k in ("prompts", "embeddings", "mask") if k not in f]
            if missing:
                raise ConfigError(f"{self.name}={path} lacks {missing[0]!r}; write it with "
                                  "phenaki-embed")
            prompts = [str(p) for p in f["prompts"]]
            emb, mask = f["embeddings"].astype(np.float32), f["mask"].astype(np.int32)
        if emb.shape[-1] != self.embed_dim:
            raise ConfigError(f"{self.name}={path} holds embeddings of width {emb.shape[-1]}, "
                              f"but config.text.embed_dim={self.embed_dim}")
        length = self.max_length
        if emb.shape[1] < length:
            pad = length - emb.shape[1]
            emb = np.pad(emb, ((0, 0), (0, pad), (0, 0)))
            mask = np.pad(mask, ((0, 0), (0, pad)))
        return {p: i for i, p in enumerate(prompts)}, emb[:, :length], mask[:, :length]

    def _shard(self, caption: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        if self.num_shards is None:
            return self._open[0]
        i = shard_of(caption, self.num_shards)
        if i in self._open:
            self._open.move_to_end(i)
        else:
            self._open[i] = self._read(storage.join(self.path, shard_name(i)))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[i]

    @property
    def open_shards(self) -> int:
        return len(self._open)

    def lookup(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [N, L, D], mask int32 [N, L]); `CacheMiss` names the first
        caption the cache lacks."""
        embs, masks = [], []
        for caption in captions:
            index, emb, mask = self._shard(caption)
            if caption not in index:
                raise CacheMiss(caption)
            embs.append(emb[index[caption]])
            masks.append(mask[index[caption]])
        return np.stack(embs), np.stack(masks)


def is_sharded_output(path: str) -> bool:
    """phenaki-embed's --output names a directory (sharded) unless it ends in .npz."""
    return os.path.splitext(path)[1].lower() != ".npz"
