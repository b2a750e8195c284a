"""Reading and writing real video and images: PyAV (bundled FFmpeg) and Pillow.

Frames are always RGB uint8 [T, H, W, 3] (the peer PyTorch loader hands BGR to its model; we
ask FFmpeg for rgb24 explicitly). Videos are resampled to a fixed frame rate by timestamp
(Phenaki trains at 8 fps), images and frames are centre-cropped to a square and resized.
Paths may be local or gs:// (`storage`). Writers are atomic (`storage.atomic_path`): a killed
process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os

import numpy as np

from phenaki_jax import storage
from phenaki_jax.data.features import FPS
from phenaki_jax.storage import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class MediaError(ValueError):
    """An unreadable, corrupt or unsuitable video or image; the message names the file."""


def read_video(path: str, fps: float | None = FPS, max_frames: int | None = None) -> np.ndarray:
    """Decodes `path` to RGB uint8 [T, H, W, 3], resampled to `fps` (None keeps every frame).

    Resampling picks, for each output time k / fps, the last decoded frame at or before it, so
    a 24 fps source yields every third frame and a 4 fps source repeats frames. Times count
    from the first frame's timestamp: a stream that starts later than 0 (an edited or cut
    file) starts at its first frame, rather than repeating it until its start time.
    """
    import av

    if not storage.isfile(path):
        raise MediaError(f"video file not found: {path}")
    frames: list[np.ndarray] = []
    try:
        with storage.local_copy(path) as local, av.open(local) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            next_t, last, last_t, start = 0.0, None, 0.0, None
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else last_t + (start or 0.0)
                start = t if start is None else start
                t -= start
                rgb = frame.to_ndarray(format="rgb24")
                if fps is None:
                    frames.append(rgb)
                else:
                    # Output time next_t lies before this frame: the previous frame shows then.
                    while last is not None and next_t < t - 1e-6:
                        frames.append(last)
                        next_t += 1.0 / fps
                    last, last_t = rgb, t
                if max_frames is not None and len(frames) >= max_frames:
                    break
            while (
                fps is not None
                and last is not None
                and next_t <= last_t + 1e-6
                and (max_frames is None or len(frames) < max_frames)
            ):
                frames.append(last)
                next_t += 1.0 / fps
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg reports corruption in many types
        raise MediaError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
    if not frames:
        raise MediaError(f"{path} contains no decodable frames")
    out = np.stack(frames[:max_frames] if max_frames else frames).astype(np.uint8)
    return out


def read_image(path: str) -> np.ndarray:
    """Reads an image file as RGB uint8 [H, W, 3] (alpha dropped, greyscale expanded)."""
    from PIL import Image, UnidentifiedImageError

    if not storage.isfile(path):
        raise MediaError(f"image file not found: {path}")
    try:
        with storage.open_file(path) as f, Image.open(f) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MediaError(f"cannot read image {path}: {e}") from e


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
