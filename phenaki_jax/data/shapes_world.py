"""Shapes world: renderer, captions, splits and judge of the built-in text-video world.

This module implements `shared/specs/shapes_world.md` (the contract) in pure numpy, so that the
data pipeline, the story tools and the evaluation all agree on one world. Where the spec leaves a
detail open, the choice made here is written down next to the code that makes it.

Geometry. Frames are `uint8 [R, R, 3]`, black background, `R` a positive multiple of 32. One
object of size `S = R // 4` moves `v = R // 32` pixels per frame. A position `(x, y)` is the
integer top-left corner of the object's `S x S` box, `x` the column and `y` the row (y grows
downward). Pixel `(row i, col j)` of the box has its centre at `(j + 0.5, i + 0.5)` in box
coordinates, and belongs to the object when:

* square: always (all `S * S` pixels);
* circle (diameter S): the centre lies within `S / 2` of the box centre `(S / 2, S / 2)`;
* triangle (upright isosceles, base S on the bottom edge of the box, height S, apex at the top
  centre `(S / 2, 0)`): the centre lies inside the triangle, i.e. `|u - S / 2| <= w / 2` for the
  centre `(u, w)`.

Since `S` is even, no pixel centre lies exactly on a circle or triangle boundary, so `<` and
`<=` agree and the rules are unambiguous. Pixel counts at S = 8 (R = 32): square 64, circle 52,
triangle 32 (rows 0..7 hold 0, 2, 2, 4, 4, 6, 6, 8 pixels; the top row of the box is empty).
The triangle always covers exactly `S * S / 2` pixels.

Randomness. Every example is a pure function of `(split, index, resolution)`: it draws from
`np.random.default_rng((_SEED_NAMESPACE, split_id, kind_id, index))`, with split ids
train 0, validation 1, test 2 and kind ids image 0, video 1, continuation 2, mixture choice 3, so
the splits are disjoint by seed. The resolution is not part of the seed and categorical draws
come before positions, so an index has the same caption at every resolution.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("magenta", "triangle"), ("cyan", "circle"), ("yellow", "square"), ("white", "triangle")}
)
# (color, shape) pairs, colour-major in palette order.
IMAGE_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
VIDEO_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in IMAGE_PAIRS if p not in HELD_OUT)

NUM_FRAMES = 11
FPS = 8
# A continuation clip's colour and direction switch at this frame: frames [0, 5) follow the
# first (color, direction), frames [5, 11) the second, which the caption describes.
CONTINUATION_SPLIT = 5
SPLITS: tuple[str, ...] = ("train", "validation", "test")
KINDS: tuple[str, ...] = ("image", "video", "continuation")
DEFAULT_RESOLUTION = 32
DEFAULT_IMAGE_FRACTION = 0.2
# Fraction of *video* examples that are continuation clips (spec default).
DEFAULT_CONTINUATION_FRACTION = 0.25

# Judge thresholds, from the spec.
FOREGROUND_THRESHOLD = 127  # foreground: largest channel strictly above this
SQUARE_MIN_FILL = 0.9  # fill ratio > 0.9: square
CIRCLE_MIN_FILL = 0.7  # 0.7 <= fill ratio <= 0.9: circle; below: triangle
STILL_SPEED = 0.35  # in units of v per frame: slower than this on average is still
MAX_JUMP = 3.0  # in units of v: a larger consecutive-frame centroid jump breaks continuity

_UNIT_VELOCITY: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
_SEED_NAMESPACE = 0x5AEDC0DE  # keeps these streams apart from other users of SeedSequence
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_KIND_IDS = {"image": 0, "video": 1, "continuation": 2, "mixture": 3}

_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_PROMPT_RE = re.compile(
    rf"a (?P<color>{_COLOR_RE}) (?P<shape>{_SHAPE_RE})"
    r"(?: (?:moves (?P<direction>left|right|up|down)|(?P<still>stays still)))?"
)
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)  # [7, 3]


# ----------------------------------------------------------------------------- geometry


def check_resolution(resolution: int) -> int:
    """Returns R as an int, or raises ValueError unless it is a positive multiple of 32."""
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, np.integer))
        or resolution <= 0
        or resolution % 32
    ):
        raise ValueError(
            f"resolution must be a positive multiple of 32 (32, 64, 128, ...), got {resolution!r}"
        )
    return int(resolution)


def object_size(resolution: int) -> int:
    """Side S of the object's bounding box in pixels: R // 4 (8 at R = 32)."""
    return check_resolution(resolution) // 4


def speed(resolution: int) -> int:
    """Speed v in pixels per frame: R // 32 (1 at R = 32)."""
    return check_resolution(resolution) // 32


def velocity(direction: str, resolution: int) -> tuple[int, int]:
    """Per-frame displacement (dx, dy) in pixels for a direction; y grows downward."""
    if direction not in _UNIT_VELOCITY:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    v = speed(resolution)
    ux, uy = _UNIT_VELOCITY[direction]
    return ux * v, uy * v


@functools.lru_cache(maxsize=64)
def _mask(shape: str, size: int) -> np.ndarray:
    # Twice the pixel-centre coordinates, relative to the box centre, keep the tests in integers:
    # a = 2u - S, b = 2w - S are odd, so no centre sits on a boundary.
    a = 2 * np.arange(size)[None, :] + 1 - size  # columns
    b = 2 * np.arange(size)[:, None] + 1 - size  # rows
    if shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "circle":
        mask = a * a + b * b <= size * size
    elif shape == "triangle":
        # |u - S/2| <= w/2  <=>  |a| <= w = (b + S) / 2  <=>  2|a| <= b + S.
        mask = 2 * np.abs(a) <= b + size
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask.setflags(write=False)
    return mask


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Object membership of the pixels of an `S x S` box: bool `[S, S]` indexed `[row, col]`.

    Read-only (cached). See the module docstring for the exact rules.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return _mask(shape, int(size))


def _check_color(color: str) -> tuple[int, int, int]:
    if color not in PALETTE:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    return PALETTE[color]


def _draw(canvas: np.ndarray, shape: str, color: str, x: int, y: int) -> None:
    """Paints the object into `canvas` `[R, R, 3]` in place, clipped to the canvas."""
    rgb = _check_color(color)
    r = canvas.shape[0]
    mask = _mask(shape, r // 4)
    s = mask.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, r), min(y + s, r)
    if x0 >= x1 or y0 >= y1:
        return
    sub = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    canvas[y0:y1, x0:x1][sub] = rgb


def render_frame(shape: str, color: str, x: int, y: int, resolution: int = 32) -> np.ndarray:
    """Renders one object on a black canvas.

    Args:
      shape: one of `SHAPES`.
      color: one of `COLORS`; every object pixel gets exactly this palette colour.
      x, y: integer top-left corner (column, row) of the object's `S x S` box. Parts outside the
        canvas are clipped (the generators below never place an object partly outside).
      resolution: R, a positive multiple of 32.

    Returns:
      uint8 `[R, R, 3]`.
    """
    r = check_resolution(resolution)
    shape_mask(shape, r // 4)  # validates the shape
    canvas = np.zeros((r, r, 3), dtype=np.uint8)
    _draw(canvas, shape, color, int(x), int(y))
    return canvas


def render_clip(
    shape: str,
    colors: Sequence[str],
    positions: Sequence[tuple[int, int]],
    resolution: int = 32,
) -> np.ndarray:
    """Renders a clip of one object: frame t shows `colors[t]` at `positions[t]`.

    Returns:
      uint8 `[T, R, R, 3]` with `T = len(positions) == len(colors)`.
    """
    r = check_resolution(resolution)
    if len(colors) != len(positions):
        raise ValueError(f"got {len(colors)} colours for {len(positions)} positions")
    shape_mask(shape, r // 4)
    frames = np.zeros((len(positions), r, r, 3), dtype=np.uint8)
    for t, (color, (x, y)) in enumerate(zip(colors, positions, strict=True)):
        _draw(frames[t], shape, color, int(x), int(y))
    return frames


# ----------------------------------------------------------------------------- captions


def caption_video(color: str, shape: str, direction: str) -> str:
    """`a {color} {shape} moves {direction}`, or `a {color} {shape} stays still`."""
    base = caption_image(color, shape)
    if direction == "still":
        return f"{base} stays still"
    if direction not in _UNIT_VELOCITY:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    return f"{base} moves {direction}"


def caption_image(color: str, shape: str) -> str:
    """`a {color} {shape}`."""
    _check_color(color)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return f"a {color} {shape}"


def parse_prompt(prompt: str) -> tuple[str, str, str | None]:
    """Parses a caption of the grammar exactly (lower case, single spaces, no period).

    Returns:
      (color, shape, direction), direction None for an image caption `a {color} {shape}`.

    Raises:
      ValueError: the text is not a caption of the grammar.
    """
    m = _PROMPT_RE.fullmatch(prompt) if isinstance(prompt, str) else None
    if m is None:
        raise ValueError(
            f"prompt {prompt!r} is outside the shapes-world grammar: expected "
            "'a {color} {shape}', 'a {color} {shape} moves {left|right|up|down}' or "
            f"'a {{color}} {{shape}} stays still', with color in {COLORS} and shape in {SHAPES}"
        )
    direction = "still" if m.group("still") else m.group("direction")
    return m.group("color"), m.group("shape"), direction


# ----------------------------------------------------------------------------- examples


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


def _check_frames(frames: np.ndarray, resolution: int, rank: int) -> np.ndarray:
    r = check_resolution(resolution)
    frames = np.asarray(frames)
    if frames.ndim != rank or frames.shape[-3:] != (r, r, 3):
        expected = "[R, R, 3]" if rank == 3 else "[T, R, R, 3]"
        raise ValueError(f"expected frames {expected} with R = {r}, got shape {frames.shape}")
    return frames


def judge_frame(frame: np.ndarray, resolution: int = 32) -> dict:
    """Judges one frame as the spec says.

    Args:
      frame: `[R, R, 3]` RGB on the 0..255 scale (uint8 expected).
      resolution: R.

    Returns:
      dict with `has_foreground` (bool); `color`, `shape` (str, None without foreground);
      `centroid` (x, y) = mean (column, row) index of the foreground pixels (None without
      foreground); `fill_ratio` (foreground pixels / area of their bounding box) and
      `num_pixels`.
    """
    frame = _check_frames(frame, resolution, rank=3)
    foreground = frame.max(axis=-1) > FOREGROUND_THRESHOLD
    rows, cols = np.nonzero(foreground)
    if rows.size == 0:
        return dict(
            has_foreground=False,
            color=None,
            shape=None,
            centroid=None,
            fill_ratio=None,
            num_pixels=0,
        )
    mean_rgb = frame[rows, cols].astype(np.float64).mean(axis=0)
    # argmin returns the first minimum, so exact ties go to the earlier palette entry.
    color = COLORS[int(np.argmin(((_PALETTE_ARRAY - mean_rgb) ** 2).sum(axis=1)))]
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = rows.size / float(box_area)
    if fill > SQUARE_MIN_FILL:
        shape = "square"
    elif fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "triangle"
    return dict(
        has_foreground=True,
        color=color,
        shape=shape,
        centroid=(float(cols.mean()), float(rows.mean())),
        fill_ratio=fill,
        num_pixels=int(rows.size),
    )


def segment_direction(
    centroids: Sequence[tuple[float, float] | None], resolution: int = 32
) -> str | None:
    """Direction of a segment from its per-frame centroids.

    The displacement is taken from the first to the last frame that has a centroid (frames
    without foreground are skipped), divided by the number of frame steps between them:
    `still` if the Euclidean norm of that per-frame average is under 0.35 v, else the dominant
    axis and its sign (an exact |dx| = |dy| tie counts as horizontal).

    Returns:
      one of `DIRECTIONS`, or None when fewer than two frames have a centroid.
    """
    v = speed(resolution)
    valid = [(t, c) for t, c in enumerate(centroids) if c is not None]
    if len(valid) < 2:
        return None
    (t0, (x0, y0)), (t1, (x1, y1)) = valid[0], valid[-1]
    dx, dy = float(x1) - float(x0), float(y1) - float(y0)
    if np.hypot(dx, dy) / (t1 - t0) < STILL_SPEED * v:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _majority(values: Sequence) -> object:
    # Plurality over frames; "no foreground" (None) is a value too; ties go to the value seen
    # first, which Counter preserves through insertion order.
    counts = collections.Counter(values)
    best = max(counts.values())
    return next(v for v in counts if counts[v] == best)


def judge_segment(frames: np.ndarray, prompt: str, resolution: int = 32) -> dict:
    """Does a segment adhere to its prompt?

    Args:
      frames: `[T, R, R, 3]` RGB on the 0..255 scale.
      prompt: a caption of the grammar. For an image caption (`a {color} {shape}`) only colour
        and shape are checked.
      resolution: R.

    Returns:
      dict with `adheres` (bool); the judged `color` and `shape` (majority over frames) and
      `direction` (`segment_direction`, None for a single frame); `expected_color`,
      `expected_shape`, `expected_direction`; `color_ok`, `shape_ok`, `direction_ok`; and
      `frames`, the per-frame `judge_frame` dicts.
    """
    frames = _check_frames(frames, resolution, rank=4)
    return _judge_judged_frames([judge_frame(f, resolution) for f in frames], prompt, resolution)


def _judge_judged_frames(per_frame: list[dict], prompt: str, resolution: int) -> dict:
    expected_color, expected_shape, expected_direction = parse_prompt(prompt)
    color = _majority([j["color"] for j in per_frame]) if per_frame else None
    shape = _majority([j["shape"] for j in per_frame]) if per_frame else None
    direction = segment_direction([j["centroid"] for j in per_frame], resolution)
    color_ok = color == expected_color
    shape_ok = shape == expected_shape
    direction_ok = expected_direction is None or direction == expected_direction
    return dict(
        adheres=bool(color_ok and shape_ok and direction_ok),
        color=color,
        shape=shape,
        direction=direction,
        expected_color=expected_color,
        expected_shape=expected_shape,
        expected_direction=expected_direction,
        color_ok=color_ok,
        shape_ok=shape_ok,
        direction_ok=direction_ok,
        frames=per_frame,
    )


def judge_story(
    frames: np.ndarray,
    segments: Sequence[tuple[str, int, int]],
    resolution: int = 32,
) -> dict:
    """Judges a story: adherence of each segment and continuity of the whole clip.

    Args:
      frames: `[T, R, R, 3]` RGB on the 0..255 scale, the whole story.
      segments: `(prompt, start, end)` per prompt, frames `[start, end)`; segments may overlap.
      resolution: R.

    Returns:
      dict with `segment_adherence` (list of bool), `segments` (the `judge_segment` dicts),
      `adherence` (fraction of segments that adhere), `all_adhere`, `continuous` (every frame
      has a foreground and no consecutive-frame centroid jump exceeds 3 v), `all_foreground`,
      `max_jump` (largest Euclidean jump between consecutive frames that both have a
      foreground, in pixels; 0.0 if none) and `centroids`.
    """
    frames = _check_frames(frames, resolution, rank=4)
    num_frames = frames.shape[0]
    per_frame = [judge_frame(f, resolution) for f in frames]
    judged = []
    for prompt, start, end in segments:
        if not 0 <= start < end <= num_frames:
            raise ValueError(
                f"segment {prompt!r} [{start}, {end}) is not a non-empty range of [0, {num_frames})"
            )
        judged.append(_judge_judged_frames(per_frame[start:end], prompt, resolution))
    centroids = [j["centroid"] for j in per_frame]
    all_foreground = all(c is not None for c in centroids)
    jumps = [
        float(np.hypot(b[0] - a[0], b[1] - a[1]))
        for a, b in zip(centroids[:-1], centroids[1:], strict=True)
        if a is not None and b is not None
    ]
    max_jump = max(jumps, default=0.0)
    adherence = [j["adheres"] for j in judged]
    return dict(
        segment_adherence=adherence,
        segments=judged,
        adherence=float(np.mean(adherence)) if adherence else 0.0,
        all_adhere=bool(adherence) and all(adherence),
        continuous=bool(all_foreground and max_jump <= MAX_JUMP * speed(resolution)),
        all_foreground=all_foreground,
        max_jump=max_jump,
        centroids=centroids,
    )
