"""The prepared-record contract: `tf.train.Example`s in ArrayRecord files, and `dataset.json`.

A prepared directory (written by `phenaki-prepare`, read by `prepared:DIR` data sets) holds:

* `{split}-{shard}.array_record`: one `tf.train.Example` per record, with features
  `frames` (bytes list: one JPEG per frame, 1 for an image, `num_frames` for a clip, at `fps`),
  `text` (bytes: the caption, UTF-8), `context_frames` (int64: leading frames the caption does
  not describe; `context_frames` of `dataset.json` for a continuation clip, else 0), `key` and
  `source` (bytes: the example's and its source's names, for tracing). Records are written
  with ArrayRecord's `group_size:1`, so any record is read without decoding its neighbours.
* `stats/{shard}.json`: the shard's counts (files, records by split and kind, skips by
  reason), written after its record files: a shard without it is unfinished and is prepared
  again by a rerun.
* `captions/{shard}.txt`: the shard's distinct captions, one per line (`phenaki-embed` input).
* `dataset.json` (`DATASET_FILE`) and `report.json`, written last by each run.

Examples are encoded here without TensorFlow (the protobuf wire format of `tf.train.Example`
is small and stable), so preparation workers never load it; the reader parses them with
`tf.io.parse_single_example`, and the tests check one against the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from phenaki_jax import storage
from phenaki_jax.config import ConfigError

DATASET_FILE = "dataset.json"
REPORT_FILE = "report.json"
FORMAT = "phenaki_jax.prepared/1"
RECORD_SUFFIX = ".array_record"
# Random access to any record: one record per compressed group, and JPEG bytes do not
# compress, so no compression either.
WRITER_OPTIONS = "group_size:1,uncompressed"
FEATURES = ("frames", "text", "context_frames", "key", "source")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    # Feature.bytes_list (1) -> BytesList.value (1), repeated.
    return _field(1, b"".join(_field(1, v) for v in values))


def _int64_feature(values: Sequence[int]) -> bytes:
    # Feature.int64_list (3) -> Int64List.value (1), packed.
    return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))


def encode_example(frames: Sequence[bytes], text: bytes, context_frames: int, key: bytes,
                   source: bytes) -> bytes:
    """A serialized `tf.train.Example` with the contract's five features."""
    features = {
        "frames": _bytes_feature(frames),
        "text": _bytes_feature([text]),
        "context_frames": _int64_feature([context_frames]),
        "key": _bytes_feature([key]),
        "source": _bytes_feature([source]),
    }
    # Example.features (1) -> Features.feature (1): map entries {key = 1, value = 2}.
    entries = b"".join(_field(1, _field(1, name.encode()) + _field(2, feature))
                       for name, feature in sorted(features.items()))
    return _field(1, entries)


def write_records(path: str, records: Sequence[bytes]) -> None:
    """One ArrayRecord file, atomically (local or gs://)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    with storage.atomic_path(path) as tmp:
        writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
        try:
            for record in records:
                writer.write(record)
        finally:
            writer.close()


def read_dataset(directory: str, name: str = "config.data.name") -> dict[str, Any]:
    """`dataset.json` of a prepared directory; a one-line ConfigError if there is none."""
    path = storage.join(directory, DATASET_FILE)
    if not storage.isfile(path):
        raise ConfigError(f"{name}: {directory} has no {DATASET_FILE}: not a phenaki-prepare "
                          "output directory (or its preparation has not finished)")
    try:
        info = json.loads(storage.read_text(path))
    except ValueError as e:
        raise ConfigError(f"{name}: {path} is not valid JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConfigError(f"{name}: {path} is not a {FORMAT} description")
    return info


def check_matches(info: dict[str, Any], directory: str, resolution: int, num_frames: int,
                  fps: int, name: str = "config.data.name") -> None:
    """A prepared set must have been prepared at the config's resolution, clip length and
    frame rate; otherwise one line naming both values."""
    if info.get("fps") != fps:
        raise ConfigError(f"{name}: {directory} was prepared at {info.get('fps')} fps, but "
                          f"training reads {fps} fps clips")
    for field, want in (("resolution", resolution), ("num_frames", num_frames)):
        if info.get(field) != want:
            raise ConfigError(f"{name}: {directory} was prepared with {field}="
                              f"{info.get(field)}, but config.data.{field} is {want}; prepare "
                              f"it again with phenaki-prepare --{field}={want}")
