"""The shapes world's objects and their rendering (the rules: docs/shapes_world.md).

The world is pure numpy, so that the data pipeline, the story tools and the evaluation all
agree on one world. Where the rules leave a detail open, the choice made here is written down
next to the code that makes it.

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
"""

from __future__ import annotations

import functools
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
# A continuation clip's colour and direction switch at this frame: frames [0, 5) follow the
# first (color, direction), frames [5, 11) the second, which the caption describes.
CONTINUATION_SPLIT = 5
SPLITS: tuple[str, ...] = ("train", "validation", "test")
KINDS: tuple[str, ...] = ("image", "video", "continuation")
DEFAULT_RESOLUTION = 32
DEFAULT_IMAGE_FRACTION = 0.2
# Fraction of *video* examples that are continuation clips (spec default).
DEFAULT_CONTINUATION_FRACTION = 0.25

_UNIT_VELOCITY: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}

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


def check_color(color: str) -> tuple[int, int, int]:
    if color not in PALETTE:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    return PALETTE[color]


def _draw(canvas: np.ndarray, shape: str, color: str, x: int, y: int) -> None:
    """Paints the object into `canvas` `[R, R, 3]` in place, clipped to the canvas."""
    rgb = check_color(color)
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
