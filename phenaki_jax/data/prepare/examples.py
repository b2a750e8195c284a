"""One item -> its training examples: decoded once, windowed, JPEG-encoded, split by source.

* An image: EXIF orientation applied, centre-cropped, resized: one example of one frame.
* A video: decoded once at `fps` by timestamp (from its first frame's timestamp, variable
  rates read by time), display rotation and sample aspect ratio applied, each frame
  centre-cropped and resized as it is decoded. Each caption segment gives every
  `num_frames`-frame window at `stride` frames; two consecutive segments of one source (the
  second starting where the first ends) give a continuation example: the first segment's last
  `context_frames` frames followed by the second's first `num_frames - context_frames`,
  under the second caption, `context_frames` set.
* The split is a hash of the item's source, so windows of one video never straddle splits.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import time
from collections.abc import Iterable, Iterator

import numpy as np

from phenaki_jax.data import media, records
from phenaki_jax.data.prepare.formats import Item, Segment, Skip

TRAIN, VALIDATION = "train", "validation"
KINDS = ("image", "video", "continuation")


@dataclasses.dataclass(frozen=True)
class Settings:
    resolution: int = 128
    num_frames: int = 11
    context_frames: int = 5
    stride: int = 11
    fps: int = 8
    validation_fraction: float = 0.05
    jpeg_quality: int = 95


@dataclasses.dataclass(frozen=True)
class Kept:
    """One prepared example, serialized, with what the shard's stats and captions need."""
    split: str
    kind: str
    key: str
    record: bytes
    caption: str


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A source that was decoded: its length in seconds and the CPU time it took."""
    seconds: float
    cpu_seconds: float


def split_of(source: str, validation_fraction: float) -> str:
    """TRAIN or VALIDATION by a hash of the source's name: stable across runs and machines."""
    if validation_fraction >= 1.0:  # 2**64 - 1 rounds to 2**64 in a float
        return VALIDATION
    h = int.from_bytes(hashlib.sha256(source.encode("utf-8", "replace")).digest()[:8], "big")
    return VALIDATION if h / 2.0**64 < validation_fraction else TRAIN


def jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    # 4:4:4: no chroma subsampling, so a 64 px frame keeps its colour edges.
    Image.fromarray(frame).save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


def _caption(segment: Segment) -> tuple[str | None, Skip | None]:
    try:
        text = segment.caption.decode("utf-8")
    except UnicodeDecodeError:
        return None, Skip("caption_not_utf8", f"caption {segment.caption[:40]!r}")
    if not text.strip():
        return None, Skip("empty_caption", "empty caption")
    return text.strip(), None


def examples_of(item: Item, settings: Settings) -> Iterator[Kept | Skip | Decoded]:
    """The item's examples, or the reasons it gives none."""
    where = f"{item.key} ({item.source})"
    if item.media is not None and not item.media:
        yield Skip("empty_media", f"{where}: zero-byte media")
        return
    captions = [_caption(s) for s in item.segments]
    for _, skip in captions:
        if skip is not None:
            yield dataclasses.replace(skip, detail=f"{where}: {skip.detail}")
    if all(text is None for text, _ in captions):
        return
    split = split_of(item.source, settings.validation_fraction)
    began = time.process_time()
    if item.kind == "image":
        try:
            image = media.read_image(item.media if item.media is not None else item.path,
                                     name=where)
        except media.MediaError as e:
            yield Skip(e.reason, str(e))
            return
        frame = media.center_crop_resize(image, settings.resolution)
        yield Decoded(0.0, time.process_time() - began)
        text = captions[0][0]
        record = records.encode_example([jpeg(frame, settings.jpeg_quality)], text.encode(),
                                        0, item.key.encode(), _source(item))
        yield Kept(split, "image", item.key, record, text)
        return
    try:
        frames = (media.decode_video(item.media, fps=settings.fps, size=settings.resolution,
                                     name=where) if item.media is not None else
                  media.read_video(item.path, fps=settings.fps, size=settings.resolution))
    except media.MediaError as e:
        yield Skip(e.reason, str(e))
        return
    yield Decoded(len(frames) / settings.fps, time.process_time() - began)
    yield from _clips(item, frames, [t for t, _ in captions], split, settings)


def _span(segment: Segment, total: int, fps: int) -> tuple[int, int]:
    """Frames [first, stop) of a segment: frame k shows at k / fps."""
    first = 0 if segment.start is None else math.ceil(segment.start * fps - 1e-6)
    stop = total if segment.end is None else math.ceil(segment.end * fps - 1e-6)
    return max(0, first), min(total, stop)


def _clips(item: Item, frames: np.ndarray, texts: list[str | None], split: str,
           settings: Settings) -> Iterator[Kept | Skip]:
    n, c = settings.num_frames, settings.context_frames
    spans = [_span(s, len(frames), settings.fps) for s in item.segments]

    @functools.cache
    def encoded(i: int) -> bytes:  # a frame in several windows is encoded once
        return jpeg(frames[i], settings.jpeg_quality)

    def record(indices: Iterable[int], text: str, context: int, key: str) -> bytes:
        return records.encode_example([encoded(i) for i in indices], text.encode(), context,
                                      key.encode(), _source(item))

    for k, ((first, stop), text) in enumerate(zip(spans, texts, strict=True)):
        if text is None:
            continue
        if stop - first < n:
            yield Skip("too_short", f"{item.key} ({item.source}): segment {k} has "
                       f"{max(0, stop - first)} frames at {settings.fps} fps, fewer than {n}")
            continue
        for p in range(first, stop - n + 1, settings.stride):
            key = f"{item.key}/{k}/{p}"
            yield Kept(split, "video", key, record(range(p, p + n), text, item.context_frames,
                                                   key), text)
            if item.context_frames:  # a hand-made clip with context: its first window only
                break
    for k in range(len(spans) - 1):
        a, b = item.segments[k], item.segments[k + 1]
        (first_a, stop_a), (first_b, stop_b) = spans[k], spans[k + 1]
        text = texts[k + 1]
        touching = (a.end is not None and b.start is not None
                    and abs(b.start - a.end) <= 1.0 / settings.fps + 1e-6)
        if (text is None or texts[k] is None or not touching or stop_a - first_a < c
                or stop_b - first_b < n - c):
            continue
        key = f"{item.key}/{k}+{k + 1}"
        clip = [*range(stop_a - c, stop_a), *range(first_b, first_b + n - c)]
        yield Kept(split, "continuation", key, record(clip, text, c, key), text)


def _source(item: Item) -> bytes:
    return item.source.encode("utf-8", "replace")
