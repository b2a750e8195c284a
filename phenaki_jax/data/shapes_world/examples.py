"""The shapes world's examples: images, videos and continuation clips by split and index.

Randomness. Every example is a pure function of `(split, index, resolution)`: it draws from
`np.random.default_rng((_SEED_NAMESPACE, split_id, kind_id, index))`, with split ids
train 0, validation 1, test 2 and kind ids image 0, video 1, continuation 2, mixture choice 3, so
the splits are disjoint by seed. The resolution is not part of the seed and categorical draws
come before positions, so an index has the same caption at every resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from phenaki_jax.data.shapes_world.captions import caption_image, caption_video
from phenaki_jax.data.shapes_world.render import (
    CONTINUATION_SPLIT,
    DEFAULT_CONTINUATION_FRACTION,
    DEFAULT_IMAGE_FRACTION,
    DIRECTIONS,
    IMAGE_PAIRS,
    KINDS,
    NUM_FRAMES,
    SPLITS,
    VIDEO_PAIRS,
    check_resolution,
    render_clip,
    velocity,
)

_SEED_NAMESPACE = 0x5AEDC0DE  # keeps these streams apart from other users of SeedSequence
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_KIND_IDS = {"image": 0, "video": 1, "continuation": 2, "mixture": 3}


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One generated example.

    Attributes:
      frames: uint8 `[T, R, R, 3]`; T = 11 for videos and continuations, 1 for images.
      caption: the caption (of the last 6 frames for a continuation).
      kind: "image", "video" or "continuation".
      color, shape, direction: of the captioned part (direction None for images).
      start: top-left (x, y) of the object's box in frame 0.
      positions: top-left (x, y) of the box in every frame, length T.
      first_color, first_direction: of frames [0, 5) for a continuation, else None.
    """

    frames: np.ndarray
    caption: str
    kind: str
    color: str
    shape: str
    direction: str | None
    start: tuple[int, int]
    positions: tuple[tuple[int, int], ...]
    first_color: str | None = None
    first_direction: str | None = None


def _rng(split: str, kind: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    return np.random.default_rng((_SEED_NAMESPACE, _SPLIT_IDS[split], _KIND_IDS[kind], int(index)))


def _offsets(steps: Sequence[tuple[int, int]]) -> np.ndarray:
    """Cumulative offsets `[len(steps) + 1, 2]` of a path starting at (0, 0)."""
    out = np.zeros((len(steps) + 1, 2), dtype=np.int64)
    if steps:
        out[1:] = np.cumsum(np.asarray(steps, dtype=np.int64), axis=0)
    return out


def _uniform_start(
    rng: np.random.Generator, offsets: np.ndarray, resolution: int
) -> tuple[int, int]:
    # Uniform over the starts that keep every frame's box inside [0, R - S] on both axes.
    limit = resolution - resolution // 4
    lo = -offsets.min(axis=0)
    hi = limit - offsets.max(axis=0)
    x = int(rng.integers(lo[0], hi[0] + 1))
    y = int(rng.integers(lo[1], hi[1] + 1))
    return x, y


def image_example(split: str, index: int, resolution: int = 32) -> Example:
    """An image: any (color, shape) pair, held-out ones included, at a uniform position.

    Returns:
      `Example` with frames uint8 `[1, R, R, 3]`.
    """
    r = check_resolution(resolution)
    rng = _rng(split, "image", index)
    color, shape = IMAGE_PAIRS[rng.integers(len(IMAGE_PAIRS))]
    start = _uniform_start(rng, _offsets([]), r)
    return Example(
        frames=render_clip(shape, [color], [start], r),
        caption=caption_image(color, shape),
        kind="image",
        color=color,
        shape=shape,
        direction=None,
        start=start,
        positions=(start,),
    )


def moving_clip(color: str, shape: str, direction: str, rng: np.random.Generator,
                resolution: int = 32) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """11 frames of one object at constant velocity from a uniform start (the spec's rule),
    for any (color, shape) pair, held-out ones included: uint8 `[11, R, R, 3]` and the
    positions. Video examples draw theirs with it."""
    r = check_resolution(resolution)
    offsets = _offsets([velocity(direction, r)] * (NUM_FRAMES - 1))
    start = _uniform_start(rng, offsets, r)
    positions = tuple((start[0] + int(dx), start[1] + int(dy)) for dx, dy in offsets)
    return render_clip(shape, [color] * NUM_FRAMES, positions, r), positions


def video_example(split: str, index: int, resolution: int = 32) -> Example:
    """A video: a non-held-out (color, shape) moving at constant velocity for 11 frames.

    Returns:
      `Example` with frames uint8 `[11, R, R, 3]`.
    """
    r = check_resolution(resolution)
    rng = _rng(split, "video", index)
    color, shape = VIDEO_PAIRS[rng.integers(len(VIDEO_PAIRS))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    frames, positions = moving_clip(color, shape, direction, rng, r)
    return Example(
        frames=frames,
        caption=caption_video(color, shape, direction),
        kind="video",
        color=color,
        shape=shape,
        direction=direction,
        start=positions[0],
        positions=positions,
    )


def continuation_example(split: str, index: int, resolution: int = 32) -> Example:
    """A continuation clip: frames [0, 5) follow (first_color, first_direction), frames
    [5, 11) follow (color, direction), which the caption describes.

    The shape is the same throughout and both (colour, shape) pairs are non-held-out. The colour
    always changes at frame 5; the second direction is drawn independently of the first and may
    equal it. Frame t's displacement from frame t - 1 is the velocity of the segment frame t
    belongs to, so the step into frame 5 already follows the new direction and every step is at
    most v: the position is continuous.

    Returns:
      `Example` with frames uint8 `[11, R, R, 3]`.
    """
    r = check_resolution(resolution)
    rng = _rng(split, "continuation", index)
    first_color, shape = VIDEO_PAIRS[rng.integers(len(VIDEO_PAIRS))]
    others = [c for c, s in VIDEO_PAIRS if s == shape and c != first_color]
    color = others[rng.integers(len(others))]
    first_direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    first_steps = [velocity(first_direction, r)] * (CONTINUATION_SPLIT - 1)
    steps = first_steps + [velocity(direction, r)] * (NUM_FRAMES - CONTINUATION_SPLIT)
    offsets = _offsets(steps)
    start = _uniform_start(rng, offsets, r)
    positions = tuple((start[0] + int(dx), start[1] + int(dy)) for dx, dy in offsets)
    colors = [first_color] * CONTINUATION_SPLIT + [color] * (NUM_FRAMES - CONTINUATION_SPLIT)
    return Example(
        frames=render_clip(shape, colors, positions, r),
        caption=caption_video(color, shape, direction),
        kind="continuation",
        color=color,
        shape=shape,
        direction=direction,
        start=start,
        positions=positions,
        first_color=first_color,
        first_direction=first_direction,
    )


_MAKERS = {"image": image_example, "video": video_example, "continuation": continuation_example}


def check_fraction(name: str, value: float) -> float:
    """Returns `value` as a float, or raises ValueError unless it is in [0, 1]."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def mixed_kind(
    split: str,
    index: int,
    image_fraction: float = DEFAULT_IMAGE_FRACTION,
    continuation_fraction: float = DEFAULT_CONTINUATION_FRACTION,
) -> str:
    """Kind of mixture example `index`: "image" with probability `image_fraction`, else a video
    that is a "continuation" with probability `continuation_fraction` (a fraction of the video
    examples, as in the spec), else "video". A pure function of its arguments."""
    image_fraction = check_fraction("image_fraction", image_fraction)
    continuation_fraction = check_fraction("continuation_fraction", continuation_fraction)
    u = _rng(split, "mixture", index).random()
    if u < image_fraction:
        return "image"
    if u < image_fraction + (1.0 - image_fraction) * continuation_fraction:
        return "continuation"
    return "video"


def mixed_example(
    split: str,
    index: int,
    resolution: int = 32,
    image_fraction: float = DEFAULT_IMAGE_FRACTION,
    continuation_fraction: float = DEFAULT_CONTINUATION_FRACTION,
) -> Example:
    """Example `index` of a mixture without seqio: `mixed_kind` picks the kind, then the
    generator of that kind renders its own example `index`."""
    kind = mixed_kind(split, index, image_fraction, continuation_fraction)
    return _MAKERS[kind](split, index, resolution)


def example(kind: str, split: str, index: int, resolution: int = 32) -> Example:
    """Dispatches to `image_example`, `video_example` or `continuation_example`."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return _MAKERS[kind](split, index, resolution)


# ----------------------------------------------------------------------------- judge
