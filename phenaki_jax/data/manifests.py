"""Real data for training: text-video / text-image JSONL manifests as seqio tasks.

Manifest format: one example per line, a JSON object naming one video or one image and its
caption,

    {"video": "clips/cat.mp4", "text": "a cat jumps onto a table"}
    {"image": "/data/images/dog.png", "text": "a dog on a beach"}

A video may also say how many of its leading frames its caption does not describe,
`"context_frames": 5` (an integer from 0 to F - 1, 0 when absent; images have none): a clip
that continues another under a new caption, as the story decoder continues. The transformer
always gives those frames' tokens and generates only the rest.

Relative media paths are relative to the manifest's directory. Other keys are ignored; lines
that are empty or only whitespace are not examples (they are neither yielded nor counted).
Line k (0-based, blank lines included in the numbering) is example k; messages number lines
from 1, as editors do.

Splits. A task has a manifest per split, `{"train": PATH, "validation": PATH}`; the key
`ALL_SPLITS` ("*") names a manifest used for every split not listed. As a config string
(`config.data.name`, see `parse_manifest_spec`):

* `jsonl:train=/a/train.jsonl,validation=/a/val.jsonl` - one manifest per split;
* `jsonl:/a/all.jsonl` - a single manifest used for every split (train and eval then read the
  same examples, which suits a smoke test, not a held-out evaluation).

Paths may not contain commas; a single path is read as `split=path` only when every
comma-separated item starts with a bare word and "=".

Every task yields exactly the features of the shapes-world tasks (`features.py`):

* `frames`: uint8 `[F, R, R, 3]`, F = `num_frames` (11 by default). Videos are decoded at
  8 fps, centre-cropped to a square, resized to R and cut to their first F frames. Images are
  centre-cropped and resized the same way and become frame 0 followed by F - 1 zero frames.
* `is_image`: int32 scalar, 1 for an image, 0 for a video.
* `text`: tf.string scalar, the caption exactly as written in the manifest.
* `context_frames`: int32 scalar, the line's `context_frames` (0 when absent).

Streams are deterministic: a split is the manifest's good examples in line order, with no
shuffling (`shuffle` and `seed` change nothing; shuffle the manifest itself if its order is
meaningful). With `shard_info=ShardInfo(i, n)` a host reads only lines i, i + n, i + 2n, ...,
so n shards partition the manifest. `num_epochs=None` cycles through the shard in order
forever (seqio repeats the one-epoch source stream).

Bad examples are skipped, never fatal and never silent. A line is bad when it is not a JSON
object naming exactly one of "video" / "image" as a string (`malformed_line`), has no or a
blank caption (`empty_text`), names a file that does not exist (`missing_file`), a file that
cannot be decoded (`unreadable`), or a video with fewer than F frames at 8 fps
(`too_few_frames`). Each bad example logs one warning naming the manifest line, the file and
the reason (once per file and manifest, not once per epoch) and is counted once per process
in `skipped_examples()` / `skipped_reasons()`. A bad verdict is remembered for the life of the
process, so later epochs skip the line without decoding it again.

A manifest in which no line is good is a config error, not an endless stream of skips:
`register_manifest_task` decodes lines in order until it finds a good one and raises a
one-line `ConfigError` naming the manifest if there is none, and
`get_dataset` does the same for the lines of its shard. A manifest that does not exist is a
one-line ConfigError naming it.

Typical use:

    from phenaki_jax.data import manifests

    name = manifests.register_manifest_task(
        "my_videos", {"train": "/a/train.jsonl", "validation": "/a/val.jsonl"}, resolution=128)
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=None, split="train", shuffle=False, num_epochs=None,
        shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()))
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence

import numpy as np

from phenaki_jax import storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data.features import FEATURES, output_features
from phenaki_jax.data.manifest_lines import (
    example_lines,
    load_example,
    read_manifest,
    require_good_line,
)
from phenaki_jax.data.python_gate import PYTHON_GATE
from phenaki_jax.data.tf_quiet import seqio, tf

SPEC_PREFIX = "jsonl:"
ALL_SPLITS = "*"
# Splits a source with an `ALL_SPLITS` manifest reports (it serves any other name as well).
DEFAULT_SPLITS = ("train", "validation", "test")
def _is_good(ex: dict[str, tf.Tensor]) -> tf.Tensor:
    return ex["ok"]


def _without_flag(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {k: ex[k] for k in FEATURES}


class ManifestSource(seqio.DataSource):
    """Examples of JSONL manifests, one manifest per split, decoded with PyAV and Pillow.

    Element k of shard (i, n) of a split is the k-th good example among manifest lines
    i, i + n, i + 2n, ...; one epoch per `get_dataset` call.
    """

    def __init__(self, manifests: Mapping[str, str], resolution: int, num_frames: int) -> None:
        self.manifests = {s: storage.resolve(p) for s, p in manifests.items()}
        self.resolution = resolution
        self.num_frames = num_frames
        splits = [s for s in self.manifests if s != ALL_SPLITS]
        if ALL_SPLITS in self.manifests:
            splits += [s for s in DEFAULT_SPLITS if s not in splits]
        # Not cacheable: decoded clips are large and the files may change. "Internal
        # shuffling" lets shuffle=True pass without a shuffle buffer: order is the manifest's.
        super().__init__(splits=splits, caching_permitted=False,
                         performs_internal_shuffling=True)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [self.manifest(split)]

    def __repr__(self) -> str:
        return (f"ManifestSource(manifests={self.manifests}, resolution={self.resolution}, "
                f"num_frames={self.num_frames})")

    def manifest(self, split: str) -> str:
        """The manifest serving `split`; a one-line ConfigError if none does."""
        path = self.manifests.get(split, self.manifests.get(ALL_SPLITS))
        if path is None:
            raise ConfigError(
                f"no manifest for split '{split}' (have: {', '.join(sorted(self.manifests))})")
        return path

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
    ) -> tf.data.Dataset:
        """This shard's good examples in line order, `num_epochs` times (None: forever).

        `shuffle`, `seed`, `sequence_length` and `use_cached` are accepted for the interface
        and ignored (seqio's Task passes no `num_epochs` and repeats the stream itself).

        Raises:
          ConfigError: the manifest is missing, or no line of this shard is a good example.
        """
        del shuffle, seed, sequence_length, use_cached
        manifest = self.manifest(split)
        index, num_shards = (
            (0, 1) if shard_info is None else (shard_info.index, shard_info.num_shards)
        )
        if not 0 <= index < num_shards:
            raise ValueError(f"bad shard_info {shard_info}")
        lines = read_manifest(manifest)
        candidates = example_lines(lines, index, num_shards)
        where = "" if num_shards == 1 else f" among the lines of shard {index} of {num_shards}"
        r, n = self.resolution, self.num_frames
        require_good_line(manifest, lines, candidates, r, n, where)

        def load(line: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            # The shapes-world gate: at interpreter exit tf.data's read-ahead threads must stop
            # calling into Python. Its blank example is marked good so that the filter below
            # lets it through: buffers fill and the threads go idle instead of spinning.
            is_open = PYTHON_GATE.enter()
            try:
                if not is_open:
                    blank = np.zeros((n, r, r, 3), np.uint8)
                    return blank, np.int32(0), np.bytes_(b""), np.int32(0), np.bool_(True)
                ex = load_example(manifest, lines, int(line), r, n)
                if ex is None:  # recorded by load_example; the filter below drops it
                    blank = np.zeros((n, r, r, 3), np.uint8)
                    return blank, np.int32(0), np.bytes_(b""), np.int32(0), np.bool_(False)
                return (ex["frames"], ex["is_image"], ex["text"], ex["context_frames"],
                        np.bool_(True))
            finally:
                PYTHON_GATE.leave()

        def to_features(line: tf.Tensor) -> dict[str, tf.Tensor]:
            # The output is a pure function of the line (the ledger's side effects happen once
            # per line), hence stateful=False: tf.data may then checkpoint the iterator.
            frames, is_image, text, context, ok = tf.numpy_function(
                load, [line], [tf.uint8, tf.int32, tf.string, tf.int32, tf.bool],
                stateful=False)
            frames.set_shape((n, r, r, 3))
            for scalar in (is_image, text, context, ok):
                scalar.set_shape(())
            return {"frames": frames, "is_image": is_image, "text": text,
                    "context_frames": context, "ok": ok}

        ds = tf.data.Dataset.from_tensor_slices(np.asarray(candidates, np.int64))
        ds = ds.map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(_is_good).map(_without_flag)
        if num_epochs != 1:
            # An epoch with no good example ends a repeated tf.data stream rather than looping.
            ds = ds.repeat(num_epochs)
        return ds


def _check_positive(name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def register_manifest_task(name: str, manifests: dict[str, str], resolution: int,
                           num_frames: int = 11) -> str:
    """Registers a seqio task reading JSONL manifests (idempotent).

    Args:
      name: task name.
      manifests: split -> manifest path; the key `ALL_SPLITS` ("*") serves every split not
        listed. Relative manifest paths are taken from the current directory.
      resolution: R, the side of the square frames.
      num_frames: F, frames per example; a video shorter than F frames at 8 fps is skipped.

    Returns:
      `name`.

    Raises:
      ConfigError (one line): a manifest does not exist, has no lines or no good line; or
        `name` is already registered as something else.
    """
    r = _check_positive("resolution", resolution)
    f = _check_positive("num_frames", num_frames)
    if not manifests:
        raise ConfigError(f"task {name!r} needs at least one manifest")
    source = ManifestSource(manifests, r, f)
    if name in seqio.TaskRegistry.names():
        existing = seqio.TaskRegistry.get(name).source
        same = (getattr(existing, "manifests", None), getattr(existing, "resolution", None),
                getattr(existing, "num_frames", None)) == (source.manifests, r, f)
        if not same:
            raise ConfigError(
                f"task {name!r} is already registered with another source")
        return name
    for path in sorted(set(source.manifests.values())):
        lines = read_manifest(path)
        require_good_line(path, lines, example_lines(lines), r, f, "")
    seqio.TaskRegistry.add(name, source=source, output_features=output_features(),
                           shuffle_buffer_size=None)
    return name


_SPLIT_ITEM = re.compile(r"^(\w+)=(.+)$")


def parse_manifest_spec(spec: str) -> dict[str, str]:
    """`[jsonl:]train=A,validation=B` -> {"train": A, ...}; `[jsonl:]A` -> {ALL_SPLITS: A}."""
    body = spec[len(SPEC_PREFIX):] if spec.startswith(SPEC_PREFIX) else spec
    if not body.strip():
        raise ConfigError(f"config.data.name='{spec}' names no manifest")
    items = [item.strip() for item in body.split(",")]
    matches = [_SPLIT_ITEM.match(item) for item in items]
    if not all(matches):
        if len(items) > 1:
            raise ConfigError(
                f"config.data.name='{spec}' must be jsonl:PATH or jsonl:split=PATH,split=PATH")
        return {ALL_SPLITS: body.strip()}
    out: dict[str, str] = {}
    for m in matches:
        split, path = m.group(1), m.group(2).strip()
        if split in out:
            raise ConfigError(f"config.data.name='{spec}' gives split '{split}' twice")
        out[split] = path
    return out


def manifest_task_name(manifests: Mapping[str, str], resolution: int, num_frames: int) -> str:
    """A task name that is a pure function of the (absolute) manifest paths, R and F."""
    canonical = json.dumps(sorted((s, storage.resolve(p)) for s, p in manifests.items()))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
    return f"jsonl_{digest}_{resolution}px_{num_frames}f"


def register_spec(spec: str, resolution: int, num_frames: int = 11,
                  splits: Sequence[str] = ()) -> str:
    """Registers the task a `jsonl:...` config string names (idempotent); returns its name.

    Args:
      spec: `jsonl:train=A,validation=B` or `jsonl:A` (see the module docstring).
      resolution: R.
      num_frames: F.
      splits: splits the caller will read; each must have a manifest.

    Raises:
      ConfigError (one line): a bad spec, a split without a manifest, or a bad manifest.
    """
    manifests = parse_manifest_spec(spec)
    for split in splits:
        if split not in manifests and ALL_SPLITS not in manifests:
            raise ConfigError(
                f"config.data.name='{spec}' has no manifest for split '{split}'; add "
                f"{split}=PATH or give a single manifest for every split")
    name = manifest_task_name(manifests, resolution, num_frames)
    return register_manifest_task(name, manifests, resolution, num_frames)
