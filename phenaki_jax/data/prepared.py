"""Prepared record directories (`phenaki-prepare` output) as seqio tasks.

`prepared:DIR` names one directory, `prepared:DIR_A=0.8,DIR_B=0.2` a mixture of several with
those rates; each spec is registered as one seqio task yielding the features of
`features.py`.

Training streams are index-addressable, so a batch is a pure function of (seed, batch, host)
and resuming positions the stream without reading what it skips:

* element k of host i of n is the global example g = k * n + i (global batch b holds
  examples b * B .. b * B + B - 1, so hosts read disjoint slices whatever the file count);
* example g comes from directory `choice(seed, g)`, a stateless draw at the rates, and within
  it from record `index_shuffle(g mod N, seed, epoch g div N)` of its N records: a stateless
  permutation per epoch (one directory alone is read in exact epochs);
* records are fetched by index from ArrayRecord files (a small Python call per batch of
  indices), parsed and JPEG-decoded by tf.data's C++ ops in parallel threads.

Finite reads (`num_epochs=1`, for evaluation) give every record of the split once, in file
order, host i taking records i, i + n, ... A gs:// directory is copied once into the local
cache (`storage.local_dir`) before it is read.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phenaki_jax import storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data import records
from phenaki_jax.data.features import FPS, output_features
from phenaki_jax.data.python_gate import PYTHON_GATE
from phenaki_jax.data.tf_quiet import seqio, tf

SPEC_PREFIX = "prepared:"
_FETCH_BATCH = 64


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """`prepared:DIR` or `prepared:DIR_A=0.8,DIR_B=0.2` -> [(directory, rate)]."""
    body = spec[len(SPEC_PREFIX):]
    if not body:
        raise ConfigError(f"config.data.name='{spec}' names no directory")
    parts = body.split(",")
    out = []
    for part in parts:
        path, eq, rate = part.rpartition("=") if "=" in part else (part, "", "")
        if not eq:
            if len(parts) > 1:
                raise ConfigError(f"config.data.name='{spec}': give every directory a rate "
                                  f"(DIR=RATE), '{part}' has none")
            out.append((part, 1.0))
            continue
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError(f"config.data.name='{spec}': rate '{rate}' of {path} is not a "
                              "positive number")
        out.append((path, value))
    return out


class _Split:
    """One directory's split: its record files (local), their counts, and a reader."""

    def __init__(self, directory: str, files: Sequence[Mapping[str, Any]]) -> None:
        self.paths = [storage.join(directory, f["path"]) for f in files]
        self.size = int(sum(f["records"] for f in files))
        self._reader = None
        self._lock = threading.Lock()

    def read(self, indices: np.ndarray) -> list[bytes]:
        with self._lock:
            if self._reader is None:
                from array_record.python.array_record_data_source import (
                    ArrayRecordDataSource,
                )

                self._reader = ArrayRecordDataSource(self.paths)
        return self._reader.__getitems__([int(i) for i in indices])


class PreparedSource(seqio.DataSource):
    """The records of one or more prepared directories, mixed at their rates."""

    def __init__(self, spec: str, resolution: int, num_frames: int) -> None:
        self.spec = spec
        self.resolution, self.num_frames = resolution, num_frames
        self.directories = parse_spec(spec)
        self.infos = []
        for directory, _ in self.directories:
            info = records.read_dataset(directory)
            records.check_matches(info, directory, resolution, num_frames, FPS)
            self.infos.append(info)
        splits = sorted({s for info in self.infos for s in info["splits"]})
        self._readers: dict[tuple[int, str], _Split] = {}
        super().__init__(splits=splits, caching_permitted=False,
                         performs_internal_shuffling=True)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [d for d, _ in self.directories]

    def __repr__(self) -> str:
        return f"PreparedSource({self.spec!r}, resolution={self.resolution})"

    def split(self, index: int, split: str) -> _Split:
        """Directory `index`'s split, its files fetched from gs:// on first use."""
        key = (index, split)
        if key not in self._readers:
            directory = self.directories[index][0]
            files = self.infos[index]["splits"].get(split, {}).get("files", [])
            if storage.is_remote(directory) and files:
                directory = storage.local_dir(directory)
            self._readers[key] = _Split(directory, files)
        return self._readers[key]

    def sizes(self, split: str) -> list[int]:
        return [self.split(i, split).size for i in range(len(self.directories))]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
        start: int = 0,
    ) -> tf.data.Dataset:
        """This shard's examples from its element `start` on: the endless mixed stream
        (`num_epochs=None`), or each record of the split once in order (`num_epochs=1`).
        `shuffle`, `sequence_length` and `use_cached` are accepted for the interface."""
        del shuffle, sequence_length, use_cached
        index, count = (0, 1) if shard_info is None else (shard_info.index,
                                                          shard_info.num_shards)
        sizes = self.sizes(split)
        if not sum(sizes):
            raise ConfigError(f"config.data.name='{self.spec}' has no '{split}' examples")
        if num_epochs is None:
            pairs = self._stream(sizes, 0 if seed is None else seed, index, count, start)
        else:
            pairs = self._in_order(sizes, index, count, num_epochs, start)
        return self._decode(pairs, split)

    def _stream(self, sizes: list[int], seed: int, index: int, count: int,
                start: int) -> tf.data.Dataset:
        rates = np.asarray([r if n else 0.0
                            for (_, r), n in zip(self.directories, sizes, strict=True)])
        bounds = tf.constant(np.cumsum(rates / rates.sum())[:-1], tf.float64)
        size = tf.constant(sizes, tf.int64)
        seed = tf.constant(seed, tf.int64)

        def locate(k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            g = k * count + index
            u = tf.random.stateless_uniform([], seed=tf.stack([seed, g]), dtype=tf.float64)
            source = tf.reduce_sum(tf.cast(u >= bounds, tf.int64))
            n = tf.gather(size, source)
            epoch, position = g // n, g % n
            record = tf.random.experimental.index_shuffle(
                position, seed=tf.stack([seed * 1_000_003 + source, epoch]), max_index=n - 1)
            return source, record

        return tf.data.Dataset.counter(start=start).map(locate)

    def _in_order(self, sizes: list[int], index: int, count: int, num_epochs: int,
                  start: int) -> tf.data.Dataset:
        ends = tf.constant(np.cumsum(sizes), tf.int64)  # record g of all directories in order

        def locate(g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            source = tf.searchsorted(ends, g[None], side="right", out_type=tf.int64)[0]
            return source, g - tf.concat([[0], ends], 0)[source]

        ds = tf.data.Dataset.range(index + start * count, sum(sizes), count).map(locate)
        return ds.repeat(num_epochs) if num_epochs != 1 else ds

    def _decode(self, pairs: tf.data.Dataset, split: str) -> tf.data.Dataset:
        r, t = self.resolution, self.num_frames

        def fetch(sources: np.ndarray, indices: np.ndarray) -> np.ndarray:
            # The shapes-world gate: tf.data's read-ahead threads stop calling into Python
            # once the interpreter is exiting.
            out = np.empty(len(indices), object)
            if not PYTHON_GATE.enter():
                out[:] = b""
                PYTHON_GATE.leave()
                return out
            try:
                for s in np.unique(sources):
                    where = np.nonzero(sources == s)[0]
                    got = self.split(int(s), split).read(indices[where])
                    for w, rec in zip(where, got, strict=True):
                        out[w] = rec
            finally:
                PYTHON_GATE.leave()
            return out

        def fetch_batch(sources: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
            # Pure in its inputs (records never change under a finished dataset.json).
            raw = tf.numpy_function(fetch, [sources, indices], tf.string, stateful=False)
            raw.set_shape(indices.shape)
            return raw

        spec = {"frames": tf.io.VarLenFeature(tf.string),
                "text": tf.io.FixedLenFeature([], tf.string),
                "context_frames": tf.io.FixedLenFeature([], tf.int64)}

        def parse(raw: tf.Tensor) -> dict[str, tf.Tensor]:
            ex = tf.io.parse_single_example(raw, spec)
            jpegs = tf.sparse.to_dense(ex["frames"])
            frames = tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3,
                                                           dct_method="INTEGER_ACCURATE"),
                               jpegs,
                               fn_output_signature=tf.uint8)
            n = tf.shape(frames)[0]
            tf.debugging.assert_equal(tf.shape(frames)[1:3], [r, r],
                                      message="prepared frame of another resolution")
            frames = tf.pad(frames[:t], [[0, tf.maximum(t - n, 0)], [0, 0], [0, 0], [0, 0]])
            frames.set_shape((t, r, r, 3))
            return {"frames": frames, "is_image": tf.cast(n == 1, tf.int32),
                    "text": ex["text"], "context_frames": tf.cast(ex["context_frames"],
                                                                  tf.int32)}

        raw = (pairs.batch(_FETCH_BATCH).map(fetch_batch).unbatch())
        return raw.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def task_name(spec: str, resolution: int, num_frames: int) -> str:
    digest = hashlib.sha256(f"{spec}|{resolution}|{num_frames}".encode()).hexdigest()[:12]
    return f"prepared_{digest}_{resolution}"


def register_spec(spec: str, resolution: int, num_frames: int) -> str:
    """Registers `spec` as a seqio task (idempotent) and returns its name."""
    name = task_name(spec, resolution, num_frames)
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, source=PreparedSource(spec, resolution, num_frames),
                               output_features=output_features(), shuffle_buffer_size=None)
    return name


def is_prepared(provider: Any) -> bool:
    return isinstance(getattr(provider, "source", None), PreparedSource)


def dataset_from(provider: Any, split: str, seed: int | None, shard_info: seqio.ShardInfo,
                 start: int, num_epochs: int | None = None) -> tf.data.Dataset:
    """A prepared task's stream from element `start` of this shard on, through the task's
    own preprocessors (seqio's `Task.get_dataset` has no way to say where to start)."""
    ds = provider.source.get_dataset(split=split, seed=seed, shard_info=shard_info,
                                     num_epochs=num_epochs, start=start)
    ds = provider.preprocess_precache(ds, seed=seed)
    return provider.preprocess_postcache(ds, sequence_length=None, seed=seed)
