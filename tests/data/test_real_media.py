"""Self-tests of tests/real_media.py: the real-file builders make what their docstrings say."""

from __future__ import annotations

import ast
import bisect
import csv
import json
import os
import tarfile

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from tests import real_media as rm


def test_sources():
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        assert os.path.getsize(rm.clip_path(name)) > 0
    with pytest.raises(FileNotFoundError):
        rm.clip_path("nope.mp4")
    photos = rm.photo_paths()
    assert len(photos) >= 4 and photos == sorted(photos)
    for path in photos:
        with Image.open(path) as im:
            assert im.mode == "RGB"


def test_video_variants(tmp_path):
    src = rm.clip_path("bikes.mp4")
    assert rm.truncated(src, str(tmp_path / "cut.mp4")) == int(os.path.getsize(src) * 0.4)
    with pytest.raises(av.FFmpegError):  # its moov box is at the end, now missing
        av.open(str(tmp_path / "cut.mp4"))

    rm.audio_only(str(tmp_path / "audio.mp4"))

    dst = str(tmp_path / "rot.mp4")
    assert rm.rotated(src, dst, 90) == -90
    with av.open(dst) as container:
        frame = next(container.decode(video=0))
        stored = frame.to_ndarray(format="rgb24")
    upright = np.rot90(stored, k=frame.rotation // 90)
    assert stored.shape[:2] == (frame.height, frame.width) and upright.shape[:2] == (
        frame.width,
        frame.height,
    )
    assert rm.rotated(src, str(tmp_path / "rot270.mp4"), 270) == 90

    assert rm.late_start(src, str(tmp_path / "late.mp4"), start_s=1.0) == pytest.approx(1.0)

    times = rm.variable_rate(src, str(tmp_path / "vfr.mp4"))
    assert times[:5] == pytest.approx([0.0, 0.1, 0.125, 0.175, 0.275])
    shown = [bisect.bisect_right(times, k / 8 + 1e-9) - 1 for k in range(16)]
    assert shown[:4] == [0, 2, 3, 6]  # t = 0, 0.125, 0.25, 0.375

    assert rm.short(src, str(tmp_path / "short.mp4")) < 1.4


def test_video_variants_at_29_97_fps(tmp_path):
    src = rm.clip_path("carphone_pristine.mp4")
    assert rm.late_start(src, str(tmp_path / "late.mp4")) == pytest.approx(1.001)
    assert rm.short(src, str(tmp_path / "short.mp4")) == pytest.approx(1.001)


def test_exif_rotated_jpeg(tmp_path):
    photo = rm.photo_paths()[1]
    dst = str(tmp_path / "exif.jpg")
    rm.exif_rotated_jpeg(photo, dst)
    with Image.open(photo) as original, Image.open(dst) as stored:
        assert stored.size == original.size[::-1]
        assert ImageOps.exif_transpose(stored).size == original.size


def _members(path: str) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar.getmembers()]


def test_img2dataset_layout(tmp_path):
    photos = rm.photo_paths()
    shards = [
        [
            rm.Item("an astronaut", photos[0]),
            rm.Item("a cat", photos[1]),
            rm.Item("gone", status="failed_to_download"),
            rm.Item(b"caf\xe9 latin-1", photos[2]),
            rm.Item("", b""),
            rm.Item("cut", rm.truncated_bytes(photos[3])),
            rm.Item("again", photos[4], key="000000001"),
        ],
        [rm.Item("one", photos[0]), rm.Item(None, photos[1])],
        [rm.Item("x", photos[0]), rm.Item("y", photos[1])],
    ]
    out = str(tmp_path / "crawl")
    keys = rm.write_img2dataset(out, shards, unfinished={1}, corrupt_keys={"000020001"})
    assert keys[:3] == ["000000000", "000000001", "000000002"] and keys[6] == "000000001"
    assert sorted(os.listdir(out)) == [
        "00000.parquet", "00000.tar", "00000_stats.json",
        "00001.parquet", "00001.tar",
        "00002.parquet", "00002.tar", "00002_stats.json",
    ]  # fmt: skip
    names = _members(f"{out}/00000.tar")
    assert names[:3] == ["000000000.json", "000000000.png", "000000000.txt"]
    assert "000000002.json" not in names and names.count("000000001.json") == 2
    with tarfile.open(f"{out}/00000.tar") as tar:
        assert tar.extractfile("000000003.txt").read() == b"caf\xe9 latin-1"
        assert tar.extractfile("000000004.jpg").read() == b""  # zero bytes: default ext
        assert tar.extractfile("000000004.txt").read() == b""
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert list(meta) == [
        "caption", "url", "key", "status", "error_message", "width", "height",
        "original_width", "original_height", "exif", "sha256",
    ]  # fmt: skip
    assert meta["status"] == "success" and meta["width"] == 512 and meta["url"] == photos[0]
    table = pq.read_table(f"{out}/00000.parquet")
    assert table.column_names == list(meta) and table.num_rows == 7
    rows = table.to_pylist()
    assert rows[2]["status"] == "failed_to_download" and rows[2]["error_message"]
    assert rows[3]["caption"] == "caf\ufffd latin-1" and rows[5]["width"] is None
    with open(f"{out}/00000_stats.json") as f:
        stats = json.load(f)
    assert list(stats) == [
        "count", "successes", "failed_to_download", "failed_to_resize", "duration",
        "start_time", "end_time", "status_dict",
    ]  # fmt: skip
    assert (stats["count"], stats["successes"], stats["failed_to_download"]) == (7, 6, 1)
    assert stats["status_dict"] == {"success": 6, "HTTP Error 404: Not Found": 1}
    with tarfile.open(f"{out}/00001.tar") as tar:
        assert tar.extractfile("000010001.txt").read() == b""
    with pytest.raises(tarfile.ReadError), tarfile.open(f"{out}/00002.tar") as tar:
        for member in tar:
            tar.extractfile(member).read()


def test_video2dataset_layout(tmp_path):
    clip = rm.clip_path("carphone_distorted.mp4")
    extra = {"videoid": 7, "page_idx": 1, "page_dir": "000001_000050", "duration": "PT00H00M04S"}
    dead = rm.Item("dead link", status="failed_to_download", extra=extra)
    shards = [[rm.Item("a phone call", clip, extra=extra), dead]]
    out = str(tmp_path / "videos")
    assert rm.write_video2dataset(out, shards) == ["00000000", "00000001"]
    assert _members(f"{out}/00000.tar") == [
        "00000000.json", "00000000.mp4", "00000000.txt", "00000001.json", "00000001.txt",
    ]  # fmt: skip
    table = pq.read_table(f"{out}/00000.parquet")
    assert table.column_names == [*extra, "caption", "url", "key", "status", "error_message"]
    with open(f"{out}/00000_stats.json") as f:
        stats = json.load(f)
    assert stats["failed_to_subsample"] == 0 and stats["bytes_downloaded"] == os.path.getsize(clip)


def test_metadata_files(tmp_path):
    clip = rm.clip_path("bikes.mp4")
    row = {"name": "bikes, fast", "contentUrl": clip, "duration": 10}
    rm.write_webvid_csv(str(tmp_path / "w.csv"), [row])
    with open(tmp_path / "w.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(rm.WEBVID_COLUMNS) and rows[0]["duration"] == "PT00H00M10S"

    photo = rm.photo_paths()[0]
    rm.write_laion_parquet(str(tmp_path / "l.parquet"), [{"URL": photo, "TEXT": "astronaut"}])
    table = pq.read_table(tmp_path / "l.parquet")
    assert table.column_names[:5] == ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity"]
    assert table.to_pylist()[0]["WIDTH"] == 512
    rows = [{"URL": photo, "TEXT": "a"}]
    rm.write_laion_parquet(str(tmp_path / "o.parquet"), rows, variant="original")
    assert pq.read_table(tmp_path / "o.parquet").column_names[0] == "SAMPLE_ID"

    clips = rm.touching_clips(["a man rides", "he turns", "he stops"], start=0.5, seconds=1.1)
    rm.write_panda_csv(str(tmp_path / "p.csv"), [rm.PandaVideo("abc-123_x", clip, clips)])
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(rm.PANDA_COLUMNS)
    stamps = ast.literal_eval(rows[0]["timestamp"])
    assert stamps[0] == ["0:00:00.500", "0:00:01.600"] and stamps[1][0] == stamps[0][1]
    assert ast.literal_eval(rows[0]["caption"]) == ["a man rides", "he turns", "he stops"]
    assert ast.literal_eval(rows[0]["matching_score"]) == [0.45] * 3
    assert rm.panda_timestamp(3723.5) == "1:02:03.500"
