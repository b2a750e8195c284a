"""seqio tasks and mixtures of the shapes world; import this module for its registrations.

Every task and mixture yields the features of `features.py` (frames `[11, R, R, 3]`; a
continuation clip's caption tells only frames 5-10, so its `context_frames` is 5).

Registered for R in (32, 64, 128) (`register_shapes_world_tasks` adds other multiples of 32):

* tasks `shapes_world_images_{R}`, `shapes_world_videos_{R}`, `shapes_world_continuations_{R}`;
* mixture `shapes_world_{R}`: images 0.2, videos 0.6, continuations 0.2 (80% video clips, a
  quarter of them continuations), the joint text-image-video training set;
* mixture `shapes_world_videos_mix_{R}`: videos 0.75, continuations 0.25, no images, for the
  video tokenizer.

Streams. A task's split is the infinite stream of examples index 0, 1, 2, ... of
`shapes_world.{image,video,continuation}_example(split, index, R)`. With
`shard_info=ShardInfo(i, n)` a host renders only indices i, i + n, i + 2n, ..., so n shards
partition the stream and no host renders another's examples. Examples are i.i.d. by index, so
the tasks never shuffle (`shuffle=True` is accepted and changes nothing) and `seed` does not
offset anything inside a task: a task's stream is a pure function of (split, shard_info).

Mixtures choose the task of mixture element k by a stateless draw from (seed, k), so a mixture
is deterministic given its seed (`seed=None` means seed 0), whatever the `shuffle` flag. Every
host uses the same choice sequence over its own shards of the tasks.

Typical use (`sequence_length=None`: nothing is truncated):

    import seqio
    import phenaki_jax.data.tasks  # noqa: F401  (registers the tasks)

    ds = seqio.get_mixture_or_task("shapes_world_32").get_dataset(
        sequence_length=None, split="train", shuffle=False, num_epochs=None,
        shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()), seed=0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from phenaki_jax.data import shapes_world as sw
from phenaki_jax.data.features import output_features
from phenaki_jax.data.python_gate import PYTHON_GATE
from phenaki_jax.data.tf_quiet import seqio, tf

RESOLUTIONS: tuple[int, ...] = (32, 64, 128)
# Mixture rates of the default tasks, per the spec and the design.
DEFAULT_IMAGE_FRACTION = sw.DEFAULT_IMAGE_FRACTION
DEFAULT_CONTINUATION_FRACTION = sw.DEFAULT_CONTINUATION_FRACTION
# Mixture seed used when the caller passes none: mixtures are always deterministic.
DEFAULT_MIXTURE_SEED = 0

_KIND_TASK_PREFIX = {
    "image": "shapes_world_images",
    "video": "shapes_world_videos",
    "continuation": "shapes_world_continuations",
}

def task_name(kind: str, resolution: int) -> str:
    """Name of the task of one kind ("image", "video", "continuation") at resolution R."""
    if kind not in _KIND_TASK_PREFIX:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sw.KINDS}")
    return f"{_KIND_TASK_PREFIX[kind]}_{sw.check_resolution(resolution)}"


def render_features(kind: str, split: str, index: int, resolution: int) -> dict[str, np.ndarray]:
    """The task features of one example as numpy, exactly as the task yields them.

    Returns:
      dict with `frames` uint8 `[11, R, R, 3]`, `is_image` int32 `[]`, `text` bytes `[]`,
      `context_frames` int32 `[]`.
    """
    ex = sw.example(kind, split, int(index), resolution)
    frames = ex.frames
    if frames.shape[0] < sw.NUM_FRAMES:
        pad = np.zeros((sw.NUM_FRAMES - frames.shape[0],) + frames.shape[1:], np.uint8)
        frames = np.concatenate([frames, pad], axis=0)
    return {
        "frames": frames,
        "is_image": np.int32(kind == "image"),
        "text": np.bytes_(ex.caption.encode("utf-8")),
        "context_frames": np.int32(sw.CONTINUATION_SPLIT if kind == "continuation" else 0),
    }


class ShapesWorldSource(seqio.DataSource):
    """Infinite, deterministic stream of one kind of shapes-world example at one resolution.

    Element k of shard (i, n) is example index i + k * n, rendered on the fly in numpy.
    """

    def __init__(self, kind: str, resolution: int) -> None:
        if kind not in sw.KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sw.KINDS}")
        self.kind = kind
        self.resolution = sw.check_resolution(resolution)
        # Not cacheable: the stream is infinite. "Internal shuffling" because examples are
        # already i.i.d. by index; it lets shuffle=True pass without a shuffle buffer.
        super().__init__(
            splits=sw.SPLITS, caching_permitted=False, performs_internal_shuffling=True
        )

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def __repr__(self) -> str:
        return f"ShapesWorldSource(kind={self.kind!r}, resolution={self.resolution})"

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
        """Infinite dataset of this shard's examples; `shuffle`, `seed`, `sequence_length`,
        `use_cached` and `num_epochs` are accepted for the interface and ignored."""
        del shuffle, seed, sequence_length, use_cached, num_epochs
        if split not in sw.SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sw.SPLITS}")
        index, num_shards = (
            (0, 1) if shard_info is None else (shard_info.index, shard_info.num_shards)
        )
        if not 0 <= index < num_shards:
            raise ValueError(f"bad shard_info {shard_info}")
        kind, r = self.kind, self.resolution

        def render(i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            is_open = PYTHON_GATE.enter()
            try:
                if not is_open:  # the process is exiting: nobody will read this element
                    blank = np.zeros((sw.NUM_FRAMES, r, r, 3), np.uint8)
                    return blank, np.int32(0), np.bytes_(b""), np.int32(0)
                f = render_features(kind, split, int(i), r)
                return f["frames"], f["is_image"], f["text"], f["context_frames"]
            finally:
                PYTHON_GATE.leave()

        def to_features(i: tf.Tensor) -> dict[str, tf.Tensor]:
            # Pure in its input, hence stateful=False: tf.data may then checkpoint the iterator.
            frames, is_image, text, context = tf.numpy_function(
                render, [i], [tf.uint8, tf.int32, tf.string, tf.int32], stateful=False
            )
            frames.set_shape((sw.NUM_FRAMES, r, r, 3))
            is_image.set_shape(())
            text.set_shape(())
            context.set_shape(())
            return {"frames": frames, "is_image": is_image, "text": text,
                    "context_frames": context}

        return tf.data.Dataset.counter(start=index, step=num_shards).map(
            to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )


def _deterministic_sample_fn(
    datasets: Sequence[tf.data.Dataset], rates: Sequence[float], seed: int | None
) -> tf.data.Dataset:
    """Mixes `datasets`: element k comes from dataset `choice(seed, k)`, a stateless draw."""
    probs = np.asarray(rates, dtype=np.float64)
    if probs.ndim != 1 or len(probs) != len(datasets) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"bad mixing rates {rates} for {len(datasets)} datasets")
    bounds = tf.constant(np.cumsum(probs / probs.sum())[:-1], dtype=tf.float64)
    seed = tf.cast(DEFAULT_MIXTURE_SEED if seed is None else seed, tf.int64)

    def choose(k: tf.Tensor) -> tf.Tensor:
        u = tf.random.stateless_uniform([], seed=tf.stack([seed, k]), dtype=tf.float64)
        return tf.reduce_sum(tf.cast(u >= bounds, tf.int64))

    choices = tf.data.Dataset.counter().map(choose)
    return tf.data.Dataset.choose_from_datasets(list(datasets), choices)


@dataclasses.dataclass(frozen=True)
class _MixtureConfig:
    resolution: int
    image_fraction: float
    continuation_fraction: float


class ShapesWorldMixture(seqio.Mixture):
    """A `seqio.Mixture` of shapes-world tasks that remembers how it was built."""

    def __init__(self, *args, config: _MixtureConfig, **kwargs) -> None:
        self.shapes_world_config = config
        super().__init__(*args, **kwargs)

    def get_dataset(
        self,
        sequence_length: Mapping[str, int] | None = None,
        split: str = "train",
        use_cached: bool = False,
        shuffle: bool = True,
        seed: int | None = None,
        **kwargs,
    ) -> tf.data.Dataset:
        """`seqio.Mixture.get_dataset`, with `seed=None` meaning `DEFAULT_MIXTURE_SEED`.

        seqio would otherwise sample nondeterministically for `seed=None, shuffle=True` and
        with seed 42 for `shuffle=False`; here the flag never changes the stream.
        """
        return super().get_dataset(
            sequence_length=sequence_length,
            split=split,
            use_cached=use_cached,
            shuffle=shuffle,
            seed=DEFAULT_MIXTURE_SEED if seed is None else seed,
            **kwargs,
        )


def register_shapes_world_tasks(resolution: int) -> tuple[str, str, str]:
    """Registers the image, video and continuation tasks at resolution R (idempotent).

    Returns:
      their names, in the order image, video, continuation.
    """
    r = sw.check_resolution(resolution)
    names = []
    for kind in sw.KINDS:
        name = task_name(kind, r)
        if name in seqio.TaskRegistry.names():
            source = seqio.TaskRegistry.get(name).source
            if (getattr(source, "kind", None), getattr(source, "resolution", None)) != (kind, r):
                raise ValueError(f"task {name!r} is already registered with another source")
        else:
            seqio.TaskRegistry.add(
                name,
                source=ShapesWorldSource(kind, r),
                output_features=output_features(),
                shuffle_buffer_size=None,
            )
        names.append(name)
    return tuple(names)


def mixture_rates(image_fraction: float, continuation_fraction: float) -> dict[str, float]:
    """Rates by kind: images `image_fraction`; the remaining video clips split into
    continuations (`continuation_fraction` of them) and plain videos. Zero rates are left out."""
    i = sw.check_fraction("image_fraction", image_fraction)
    c = sw.check_fraction("continuation_fraction", continuation_fraction)
    rates = {"image": i, "video": (1.0 - i) * (1.0 - c), "continuation": (1.0 - i) * c}
    return {k: v for k, v in rates.items() if v > 0}


def register_shapes_world_mixture(
    name: str,
    resolution: int,
    image_fraction: float = DEFAULT_IMAGE_FRACTION,
    continuation_fraction: float = DEFAULT_CONTINUATION_FRACTION,
) -> str:
    """Registers a mixture of the shapes-world tasks at resolution R (idempotent).

    Args:
      name: mixture name.
      resolution: R, a positive multiple of 32; its tasks are registered if needed.
      image_fraction: fraction of examples that are images.
      continuation_fraction: fraction of the *video* examples that are continuation clips.

    Returns:
      `name`.

    Raises:
      ValueError: `name` is already registered as something else.
    """
    config = _MixtureConfig(
        sw.check_resolution(resolution),
        sw.check_fraction("image_fraction", image_fraction),
        sw.check_fraction("continuation_fraction", continuation_fraction),
    )
    if name in seqio.MixtureRegistry.names():
        existing = getattr(seqio.MixtureRegistry.get(name), "shapes_world_config", None)
        if existing != config:
            raise ValueError(
                f"mixture {name!r} is already registered as {existing}, not as {config}"
            )
        return name
    if name in seqio.TaskRegistry.names():
        raise ValueError(f"{name!r} is already registered as a task")
    register_shapes_world_tasks(config.resolution)
    rates = mixture_rates(config.image_fraction, config.continuation_fraction)
    seqio.MixtureRegistry.add(
        name,
        [(task_name(kind, config.resolution), rate) for kind, rate in rates.items()],
        mixture_cls=ShapesWorldMixture,
        config=config,
        sample_fn=_deterministic_sample_fn,
    )
    return name


for _r in RESOLUTIONS:
    register_shapes_world_tasks(_r)
    register_shapes_world_mixture(
        f"shapes_world_{_r}", _r, DEFAULT_IMAGE_FRACTION, DEFAULT_CONTINUATION_FRACTION
    )
    register_shapes_world_mixture(f"shapes_world_videos_mix_{_r}", _r, 0.0, 0.25)
