"""Host-side input pipeline: a seqio task or mixture -> per-host numpy batches.

The pipeline is deterministic and indexed by step: batch `n` of a run is the same whatever
happened before. Resuming at step `s` starts a prepared set's stream at batch `s` without
reading anything before it (`data.prepared`); other streams skip `s` batches. Each host
reads only its shard (`seqio.ShardInfo` from the process index) and contributes
`batch_size / process_count` examples to the global batch.

`config.data.name` is a registered seqio task or mixture, a prepared directory spec
(`prepared:DIR` or `prepared:DIR_A=0.8,DIR_B=0.2`, see `phenaki_jax.data.prepared`), or a JSONL
manifest spec read from
files (`jsonl:train=/a/train.jsonl,validation=/a/val.jsonl` or `jsonl:/a/all.jsonl`, see
`phenaki_jax.data.manifests`); bad examples of the latter are skipped and `skipped_examples()`
counts them.
"""

from __future__ import annotations

import atexit
import gc
import weakref
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from phenaki_jax.config import ConfigError
from phenaki_jax.data import manifest_lines, manifests, prepared, tasks
from phenaki_jax.data import shapes_world as sw
from phenaki_jax.data.tf_quiet import seqio, tf

# Bad examples (distinct manifest lines) skipped so far in this process, in all and by reason
# (`manifest_lines.REASONS`); 0 without any file-backed data set. The count only grows, and
# includes examples that the prefetching input pipeline has read ahead of the training step.
skipped_examples = manifest_lines.skipped_examples
skipped_reasons = manifest_lines.skipped_reasons


def get_provider(  # noqa: ANN201 - a seqio Task or Mixture
    name: str, resolution: int | None = None, num_frames: int = 11
):
    """Looks up a registered seqio task or mixture; a one-line ConfigError if unknown.

    A `jsonl:` manifest or `prepared:` directory spec is registered first, at `resolution` and
    `num_frames` (`data_name(config)` does that from the config and returns the task's name).
    """
    for prefix, register in ((manifests.SPEC_PREFIX, manifests.register_spec),
                             (prepared.SPEC_PREFIX, prepared.register_spec)):
        if name.startswith(prefix):
            if resolution is None:
                raise ConfigError(
                    f"config.data.name='{name}' needs config.data.resolution; look it up with "
                    "data_name(config)")
            name = register(name, resolution, num_frames)
            break
    try:
        return seqio.get_mixture_or_task(name)
    except (KeyError, ValueError) as e:
        raise ConfigError(
            f"config.data.name='{name}' is not a registered seqio task or mixture"
        ) from e


def data_name(config: ml_collections.ConfigDict) -> str:
    """The seqio name to read. `shapes_world_{R}` with `data.image_fraction` /
    `data.continuation_fraction` fields names the shapes-world mixture at those rates (the
    transformer's images-to-videos ratio is a config field); a `jsonl:` manifest spec is
    registered at `data.resolution` / `data.num_frames` and names its task (idempotent); any
    other name is used as is."""
    name = config.data.name
    if isinstance(name, str) and name.startswith(manifests.SPEC_PREFIX):
        splits = [config.data[k] for k in ("train_split", "eval_split") if k in config.data]
        return manifests.register_spec(name, config.data.resolution, config.data.num_frames,
                                   splits)
    if isinstance(name, str) and name.startswith(prepared.SPEC_PREFIX):
        return prepared.register_spec(name, config.data.resolution, config.data.num_frames)
    if "image_fraction" not in config.data or name != f"shapes_world_{config.data.resolution}":
        return name
    i, c = config.data.image_fraction, config.data.continuation_fraction
    if (i, c) == (sw.DEFAULT_IMAGE_FRACTION, sw.DEFAULT_CONTINUATION_FRACTION):
        return name
    try:
        return tasks.register_shapes_world_mixture(f"{name}_images{i:g}_continuations{c:g}",
                                                   config.data.resolution, i, c)
    except ValueError as e:
        raise ConfigError(f"config.data.image_fraction/continuation_fraction: {e}"
                                     ) from e


# The streams of this process that are still open. tf.data's threads call into Python
# (rendering, decoding) ahead of demand; a stream still open when the interpreter starts to
# finalize is torn down while one of those threads waits for the GIL, which it never gets
# again, and the process never exits. Closing every open stream at exit (before
# finalization) stops and joins those threads while they still can run.
_OPEN_STREAMS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def close_open_streams() -> None:
    """Closes every `host_batches` stream of this process that is still open."""
    for stream in list(_OPEN_STREAMS):
        stream.close()
    gc.collect()  # iterators held in reference cycles go now, not during finalization


def host_batches(
    config: ml_collections.ConfigDict,
    split: str,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    batch_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this host's part of each global batch (see `_host_batches`); every stream still
    open when the process exits is closed before the interpreter finalizes."""
    stream = _host_batches(config, split, start_batch, process_index, process_count, batch_size)
    _OPEN_STREAMS.add(stream)
    return stream


def _host_batches(
    config: ml_collections.ConfigDict,
    split: str,
    start_batch: int,
    process_index: int | None,
    process_count: int | None,
    batch_size: int | None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this host's part of each global batch: frames uint8 [b, T, H, W, 3], is_image
    int32 [b], text bytes [b], context_frames int32 [b] (leading frames the caption does not
    describe); b = global batch size / process count.

    With `config.data.image_batch_size` > 0 (the tokenizer's image stream) each batch also
    holds `image_frames` uint8 [bi, 1, H, W, 3]: frame 0 of the examples of
    `config.data.image_name`, read in step with the main stream (batch n of both together)."""
    tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the accelerators
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    global_batch = config.batch_size if batch_size is None else batch_size
    if global_batch % count:
        raise ConfigError(
            f"config.batch_size={global_batch} is not divisible by the {count} hosts"
        )
    image_batch = config.data.get("image_batch_size", 0)
    if image_batch % count:
        raise ConfigError(
            f"config.data.image_batch_size={image_batch} is not divisible by the {count} hosts")

    def read(name: str, size: int):  # noqa: ANN202 - a tf.data.Dataset
        provider = get_provider(name, config.data.resolution, config.data.num_frames)
        shard = seqio.ShardInfo(index=index, num_shards=count)
        per_host = size // count
        if prepared.is_prepared(provider):
            # Index-addressable: start at this host's first element of batch `start_batch`.
            return prepared.dataset_from(provider, split, config.seed, shard,
                                         start_batch * per_host).batch(per_host,
                                                                       drop_remainder=True)
        ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False,
                                  num_epochs=None, seed=config.seed, use_cached=False,
                                  shard_info=shard).batch(per_host, drop_remainder=True)
        # Other streams are positioned by reading through the batches before the start.
        return ds.skip(start_batch) if start_batch else ds

    ds = read(data_name(config), global_batch)
    if image_batch:
        images = read(config.data.image_name, image_batch).map(lambda ex: ex["frames"][:, :1])
        ds = tf.data.Dataset.zip(ds, images).map(lambda ex, im: {**ex, "image_frames": im})
    ds = ds.prefetch(config.data.get("prefetch", 2))
    # No tf.data autotuning: closing an iterator waits for its autotuning thread, and a run of
    # several processes stalled 8-10 s at its end (completed or preempted) on that wait. The
    # maps then run on every core and the prefetch keeps its fixed depth; the step rate is the
    # same (docs/experiments/test-suite.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.with_options(options)
    want = (config.data.num_frames, config.data.resolution, config.data.resolution, 3)
    # Closing this generator ends its frame, the iterator's last reference: tf.data then stops
    # and joins its threads.
    for raw in ds.as_numpy_iterator():
        frames = raw["frames"]
        if frames.shape[1:] != want:
            raise ConfigError(
                f"config.data.name='{data_name(config)}' yields frames of shape "
                f"{frames.shape[1:]}, but config.data.num_frames/resolution ask for {want}"
            )
        # Any registered seqio task may be named; one without `context_frames` has none.
        context = raw.get("context_frames")
        out = {"frames": frames, "is_image": raw["is_image"].astype(np.int32), "text": raw["text"],
               "context_frames": (np.zeros(frames.shape[0], np.int32) if context is None
                                  else context.astype(np.int32))}
        if image_batch:
            if raw["image_frames"].shape[2:] != want[1:]:
                raise ConfigError(
                    f"config.data.image_name='{config.data.image_name}' yields frames of shape "
                    f"{raw['image_frames'].shape[2:]}, but config.data.resolution asks for "
                    f"{want[1:]}")
            out["image_frames"] = raw["image_frames"]
        yield out


def split_examples(config: ml_collections.ConfigDict, split: str,
                   max_examples: int) -> dict[str, np.ndarray]:
    """At most `max_examples` examples of a split, in order, each once (for evaluation):
    frames uint8 [N, T, R, R, 3], is_image int32 [N], text bytes [N]."""
    ds = get_provider(data_name(config), config.data.resolution,
                      config.data.num_frames).get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1, seed=config.seed,
        use_cached=False)
    rows = list(ds.take(max_examples).as_numpy_iterator())
    if not rows:
        return {"frames": np.zeros((0, config.data.num_frames, config.data.resolution,
                                    config.data.resolution, 3), np.uint8),
                "is_image": np.zeros((0,), np.int32), "text": np.zeros((0,), object)}
    return {"frames": np.stack([r["frames"] for r in rows]),
            "is_image": np.asarray([r["is_image"] for r in rows], np.int32),
            "text": np.asarray([r["text"] for r in rows], object)}
