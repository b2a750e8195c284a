"""Tests of the shapes-world seqio tasks and mixtures: features, determinism, sharding, rates."""

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

import phenaki_jax.data.tasks as tasks  # noqa: E402  (registers the tasks)
from phenaki_jax.data import shapes_world as sw  # noqa: E402
from phenaki_jax.data.features import output_features  # noqa: E402

HELD_OUT = {
    ("magenta", "triangle"),
    ("cyan", "circle"),
    ("yellow", "square"),
    ("white", "triangle"),
}
PALETTE = {
    (255, 0, 0): "red",
    (0, 255, 0): "green",
    (0, 0, 255): "blue",
    (255, 255, 0): "yellow",
    (0, 255, 255): "cyan",
    (255, 0, 255): "magenta",
    (255, 255, 255): "white",
}


def _take(name, n, split="train", shard=None, seed=0, shuffle=False):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=None,
        split=split,
        shuffle=shuffle,
        num_epochs=None,
        shard_info=shard,
        seed=seed,
    )
    return list(ds.take(n).as_numpy_iterator())


def _key(ex):
    return ex["text"], ex["frames"].tobytes()


def _frame_color(frame):
    (rgb,) = {tuple(int(c) for c in px) for px in frame[frame.max(-1) > 0]}
    return PALETTE[rgb]


def _is_continuation(ex):
    return not ex["is_image"] and _frame_color(ex["frames"][0]) != _frame_color(ex["frames"][10])


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_registered_with_the_feature_spec(resolution):
    r = resolution
    names = [
        f"shapes_world_images_{r}",
        f"shapes_world_videos_{r}",
        f"shapes_world_continuations_{r}",
    ]
    assert all(n in seqio.TaskRegistry.names() for n in names)
    mixtures = [f"shapes_world_{r}", f"shapes_world_videos_mix_{r}"]
    assert all(n in seqio.MixtureRegistry.names() for n in mixtures)
    for name in names + mixtures:
        spec = (
            seqio.get_mixture_or_task(name)
            .get_dataset(sequence_length=None, split="validation", shuffle=False)
            .element_spec
        )
        assert set(spec) == {"frames", "is_image", "text", "context_frames"}
        assert spec["frames"] == tf.TensorSpec((11, r, r, 3), tf.uint8)
        assert spec["is_image"] == tf.TensorSpec((), tf.int32)
        assert spec["text"] == tf.TensorSpec((), tf.string)
        assert spec["context_frames"] == tf.TensorSpec((), tf.int32)
    (ex,) = _take(f"shapes_world_{r}", 1, split="test")
    assert ex["frames"].shape == (11, r, r, 3) and ex["frames"].dtype == np.uint8
    assert ex["is_image"].dtype == np.int32 and isinstance(ex["text"], bytes)


def test_task_streams_are_the_generators_by_index():
    for kind, make in [
        ("image", sw.image_example),
        ("video", sw.video_example),
        ("continuation", sw.continuation_example),
    ]:
        got = _take(tasks.task_name(kind, 32), 6, split="validation")
        for i, ex in enumerate(got):
            ref = make("validation", i, 32)
            assert ex["text"].decode() == ref.caption
            assert ex["is_image"] == int(kind == "image")
            # The frames the caption does not describe: a continuation's first segment, whose
            # colour differs from every later frame's (the spec's switch at frame 5).
            context = int(ex["context_frames"])
            if kind == "continuation":
                colors = [_frame_color(f) for f in ex["frames"]]
                assert context == 5 and len(set(colors[:context]) & set(colors[context:])) == 0
                assert ref.caption.startswith(f"a {colors[-1]} ")
            else:
                assert context == 0
            n = ref.frames.shape[0]
            np.testing.assert_array_equal(ex["frames"][:n], ref.frames)
            assert not ex["frames"][n:].any()  # images: zero frames after frame 0


def test_task_sharding_partitions_the_stream():
    name = "shapes_world_continuations_32"
    whole = [_key(e) for e in _take(name, 12, split="test")]
    for n in (2, 3):
        for i in range(n):
            shard = [_key(e) for e in _take(name, 12 // n, "test", seqio.ShardInfo(i, n))]
            assert shard == whole[i::n]


def test_mixture_is_deterministic_given_seed():
    a = [_key(e) for e in _take("shapes_world_32", 40, seed=7)]
    b = [_key(e) for e in _take("shapes_world_32", 40, seed=7)]
    assert a == b
    # The shuffle flag changes nothing (examples are i.i.d. by index); seed None means 0.
    assert [_key(e) for e in _take("shapes_world_32", 40, seed=7, shuffle=True)] == a
    assert [_key(e) for e in _take("shapes_world_32", 40, seed=None, shuffle=True)] == [
        _key(e) for e in _take("shapes_world_32", 40, seed=0)
    ]
    assert [_key(e) for e in _take("shapes_world_32", 40, seed=8)] != a
    # Shards of a mixture see disjoint examples.
    s0 = {_key(e) for e in _take("shapes_world_32", 40, "train", seqio.ShardInfo(0, 2))}
    s1 = {_key(e) for e in _take("shapes_world_32", 40, "train", seqio.ShardInfo(1, 2))}
    assert not s0 & s1


def test_mixture_rates():
    n = 800
    got = _take("shapes_world_32", n, seed=3)
    images = sum(int(e["is_image"]) for e in got) / n
    continuations = sum(_is_continuation(e) for e in got) / n
    assert abs(images - 0.2) < 0.05 and abs(continuations - 0.2) < 0.05
    got = _take("shapes_world_videos_mix_32", 400, seed=3)
    assert not any(e["is_image"] for e in got)
    assert abs(sum(_is_continuation(e) for e in got) / 400 - 0.25) < 0.06


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_held_out_never_in_video_tasks(split):
    for name in ("shapes_world_videos_32", "shapes_world_continuations_32"):
        for ex in _take(name, 300, split=split):
            color, shape, direction = sw.parse_prompt(ex["text"].decode())
            assert direction is not None and (color, shape) not in HELD_OUT
            assert (_frame_color(ex["frames"][0]), shape) not in HELD_OUT


def test_register_custom_mixture():
    name = tasks.register_shapes_world_mixture("test_shapes_world_half_images_32", 32, 0.5, 0.0)
    assert name == "test_shapes_world_half_images_32"
    assert tasks.register_shapes_world_mixture(name, 32, 0.5, 0.0) == name  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_shapes_world_mixture(name, 32, 0.4, 0.0)
    with pytest.raises(ValueError):
        tasks.register_shapes_world_mixture("test_shapes_world_bad", 32, 1.5, 0.0)
    with pytest.raises(ValueError, match="multiple of 32"):
        tasks.register_shapes_world_mixture("test_shapes_world_bad", 48, 0.5, 0.0)
    got = _take(name, 300, split="validation", seed=1)
    assert abs(sum(int(e["is_image"]) for e in got) / 300 - 0.5) < 0.1
    assert not any(_is_continuation(e) for e in got)
    # Other resolutions get their tasks on demand.
    name96 = tasks.register_shapes_world_mixture("test_shapes_world_96", 96, 0.2, 0.25)
    assert "shapes_world_videos_96" in seqio.TaskRegistry.names()
    (ex,) = _take(name96, 1)
    assert ex["frames"].shape == (11, 96, 96, 3)


def test_a_task_without_context_frames_has_none():
    """Any registered seqio task can be trained on; one that predates `context_frames` (only
    frames, is_image and text) yields batches whose context is 0 everywhere."""
    from conftest import load_config

    from phenaki_jax.data import pipeline

    def dataset(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        frames = np.arange(4 * 11 * 32 * 32 * 3, dtype=np.int64).reshape(4, 11, 32, 32, 3) % 251
        return tf.data.Dataset.from_tensor_slices({
            "frames": frames.astype(np.uint8), "is_image": np.zeros((4,), np.int32),
            "text": np.asarray([b"a red circle moves up"] * 4)}).repeat()

    features = {k: v for k, v in output_features().items() if k != "context_frames"}
    name = "test_tasks_three_features"
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset, ["train"]),
                               output_features=features)
    config = load_config("maskgit")
    config.data.name, config.batch_size = name, 2
    batch = next(pipeline.host_batches(config, "train"))
    assert batch["context_frames"].dtype == np.int32
    np.testing.assert_array_equal(batch["context_frames"], [0, 0])
    assert batch["frames"].shape == (2, 11, 32, 32, 3)


def test_the_image_stream_reads_frame_0_of_its_task_in_step_with_the_batches():
    """Reference: the spec's renderer (`render_features`), by the index each host reads."""
    from conftest import load_config

    from phenaki_jax.config import ConfigError
    from phenaki_jax.data import pipeline

    config = load_config("cvivit")
    config.batch_size, config.data.image_batch_size = 2, 4
    assert config.data.image_name == tasks.task_name("image", 32)

    def images(split, *indices):
        return np.stack([tasks.render_features("image", split, i, 32)["frames"][:1]
                         for i in indices])

    batches = pipeline.host_batches(config, "train")
    for n in range(2):
        batch = next(batches)
        assert batch["frames"].shape == (2, 11, 32, 32, 3)
        want = images("train", *range(4 * n, 4 * n + 4))
        np.testing.assert_array_equal(batch["image_frames"], want)
    resumed = next(pipeline.host_batches(config, "validation", start_batch=1))
    np.testing.assert_array_equal(resumed["image_frames"], images("validation", 4, 5, 6, 7))
    # Host 1 of 2 reads examples 1, 3, 5, ... of its shard, two per batch.
    host = next(pipeline.host_batches(config, "train", process_index=1, process_count=2))
    np.testing.assert_array_equal(host["image_frames"], images("train", 1, 3))
    config.data.image_batch_size = 3
    with pytest.raises(ConfigError, match="config.data.image_batch_size=3"):
        next(pipeline.host_batches(config, "train", process_index=0, process_count=2))
    config.data.image_batch_size, config.data.image_name = 2, "no_such_task"
    with pytest.raises(ConfigError, match="no_such_task"):
        next(pipeline.host_batches(config, "train"))


def test_streams_left_open_are_closed_at_exit_and_their_threads_joined():
    """A process that exits with a stream open must not finalize while tf.data's threads run:
    the exit hook closes the stream, and the process's thread count (from /proc, not from
    tf.data) falls back to what it was before the stream opened."""
    import os
    import time

    from conftest import load_config

    from phenaki_jax.data import pipeline

    def threads():
        return len(os.listdir("/proc/self/task"))

    config = load_config("cvivit")
    config.batch_size = 4
    next(pipeline.host_batches(config, "train"))  # tf.data's process-wide pools start once
    before = threads()
    stream = pipeline.host_batches(config, "train")
    next(stream)
    assert threads() > before, "the open stream should have threads reading ahead"
    pipeline.close_open_streams()
    deadline = time.monotonic() + 5
    while threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads() <= before
    with pytest.raises(StopIteration):
        next(stream)
