"""Reading and writing real video and images: PyAV (bundled FFmpeg) and Pillow.

Frames are always RGB uint8 [T, H, W, 3] (the peer PyTorch loader hands BGR to its model; we
ask FFmpeg for rgb24 explicitly). Videos are resampled to a fixed frame rate by timestamp
(Phenaki trains at 8 fps), images and frames are centre-cropped to a square and resized.
Paths may be local or gs:// (`storage`). Writers are atomic (`storage.atomic_path`): a killed
process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import io
import os

import numpy as np

from phenaki_jax import storage
from phenaki_jax.data.features import FPS
from phenaki_jax.storage import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class MediaError(ValueError):
    """An unreadable, corrupt or unsuitable video or image; the message names the file and
    `reason` says which: "missing_media", "no_video_stream" or "unreadable_media"."""

    def __init__(self, message: str, reason: str = "unreadable_media") -> None:
        super().__init__(message)
        self.reason = reason


def read_video(path: str, fps: float | None = FPS, max_frames: int | None = None,
               size: int | None = None) -> np.ndarray:
    """Decodes the video file `path` (local or gs://) to RGB uint8 [T, H, W, 3]; see
    `decode_video` for the resampling and the display corrections."""
    if not storage.isfile(path):
        raise MediaError(f"video file not found: {path}", "missing_media")
    with storage.local_copy(path) as local:
        return decode_video(local, fps=fps, max_frames=max_frames, size=size, name=path)


def decode_video(source: str | bytes, fps: float | None = FPS, max_frames: int | None = None,
                 size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decodes a video (a local path or the file's bytes) to RGB uint8 [T, H, W, 3].

    Frames are as a player shows them: the container's display rotation is applied, and a
    non-square sample aspect ratio (anamorphic pixels) stretches the width. With `size`, each
    frame is centre-cropped to a square of the *displayed* picture and resized to `size`
    as it is decoded, so a long source never sits in memory at full resolution.

    Resampling to `fps` picks, for each output time k / fps, the last decoded frame at or
    before it, so a 24 fps source yields every third frame, a 4 fps source repeats frames and
    a variable-rate stream is read by its timestamps. Times count from the first frame's
    timestamp: a stream that starts later than 0 (an edited or cut file) starts at its first
    frame, rather than repeating it until its start time. Only the frames kept are converted
    to RGB.
    """
    import av

    label = name or (source if isinstance(source, str) else "<video bytes>")
    frames: list[np.ndarray] = []

    sar = 1.0

    def keep(frame: av.VideoFrame) -> None:
        frames.append(_displayed(frame, sar, size))

    try:
        opened = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with opened as container:
            if not container.streams.video:
                raise MediaError(f"{label} has no video stream", "no_video_stream")
            stream = container.streams.video[0]
            ratio = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
            sar = float(ratio) if ratio else 1.0
            next_t, last, last_t, start = 0.0, None, 0.0, None
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else last_t + (start or 0.0)
                start = t if start is None else start
                t -= start
                if fps is None:
                    keep(frame)
                else:
                    # Output time next_t lies before this frame: the previous frame shows then.
                    while last is not None and next_t < t - 1e-6:
                        keep(last)
                        next_t += 1.0 / fps
                        if max_frames is not None and len(frames) >= max_frames:
                            break
                    last, last_t = frame, t
                if max_frames is not None and len(frames) >= max_frames:
                    break
            while (
                fps is not None
                and last is not None
                and next_t <= last_t + 1e-6
                and (max_frames is None or len(frames) < max_frames)
            ):
                keep(last)
                next_t += 1.0 / fps
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg reports corruption in many types
        raise MediaError(f"cannot decode video {label}: {type(e).__name__}: {e}") from e
    if not frames:
        raise MediaError(f"{label} contains no decodable frames")
    return np.stack(frames[:max_frames] if max_frames else frames).astype(np.uint8)


def _displayed(frame: object, sar: float, size: int | None) -> np.ndarray:
    """One decoded frame as shown: rotated, its pixels `sar` times as wide as tall stretched;
    with `size`, the centre square of that picture resized to `size` (one resampling from the
    stored pixels)."""
    rgb = frame.to_ndarray(format="rgb24")
    # FFmpeg's rotation is counter-clockwise in degrees (its players turn the picture by it).
    turns = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        if turns % 2:
            sar = 1.0 / sar
    if size is None and abs(sar - 1.0) < 1e-6:
        return rgb
    return _resample(rgb, sar, size)


def _resample(rgb: np.ndarray, sar: float, size: int | None) -> np.ndarray:
    """Stored pixels -> displayed picture (width times `sar`), or its centre square at `size`."""
    from PIL import Image

    h, w = rgb.shape[:2]
    display_w = w * sar
    image = Image.fromarray(rgb)
    if size is None:
        return np.asarray(image.resize((max(1, int(round(display_w))), h),
                                       Image.Resampling.BICUBIC))
    side = min(display_w, float(h))  # the square, in displayed pixels
    box_w, box_h = side / sar, side  # the same square, in stored pixels
    left, top = (w - box_w) / 2.0, (h - box_h) / 2.0
    method = Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC
    return np.asarray(image.resize((size, size), method,
                                   box=(left, top, left + box_w, top + box_h)))


def read_image(path: str | bytes, name: str | None = None) -> np.ndarray:
    """Reads an image (a path, local or gs://, or the file's bytes) as RGB uint8 [H, W, 3]:
    EXIF orientation applied, alpha dropped, greyscale expanded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (path if isinstance(path, str) else "<image bytes>")
    if isinstance(path, str) and not storage.isfile(path):
        raise MediaError(f"image file not found: {path}", "missing_media")
    try:
        with (io.BytesIO(path) if isinstance(path, bytes) else storage.open_file(path)) as f, \
                Image.open(f) as im:
            im.load()
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"cannot read image {label}: {e}") from e


def center_crop_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """[..., H, W, 3] -> [..., size, size, 3]: centre square crop, then area/bicubic resize."""
    from PIL import Image

    h, w = frames.shape[-3:-1]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = frames[..., top : top + s, left : left + s, :]
    if s == size:
        return np.ascontiguousarray(crop)
    flat = crop.reshape(-1, s, s, 3)
    method = Image.Resampling.BOX if s > size else Image.Resampling.BICUBIC
    out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), method)) for f in flat])
    return out.reshape(*frames.shape[:-3], size, size, 3)


def save_npy(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_video(path: str, frames: np.ndarray, fps: int = FPS) -> None:
    """Writes uint8 [T, H, W, 3] as H.264 mp4 or as gif, chosen by the extension; atomic."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video needs [T, H, W, 3] frames, got {frames.shape}")
    ext = os.path.splitext(path)[1].lower()
    with atomic_path(path) as tmp:
        if ext == ".gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=int(round(1000 / fps)),
                loop=0,
                optimize=False,
            )
        elif ext in (".mp4", ".m4v", ".mov"):
            _write_h264(tmp, frames, fps)
        else:
            raise ValueError(f"unsupported video extension '{ext}' for {path} (use .mp4 or .gif)")


def _write_h264(path: str, frames: np.ndarray, fps: int) -> None:
    import av

    t, h, w, _ = frames.shape
    # yuv420p needs even sizes; pad with black rather than resample the exact frames.
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = pw, ph
        stream.pix_fmt = "yuv420p"
        # Near-lossless: the mp4 is for people, the .npy beside it holds the exact frames.
        stream.options = {"crf": "12", "preset": "medium"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
