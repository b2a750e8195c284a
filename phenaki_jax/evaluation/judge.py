"""The shapes world's judge: what a frame shows (colour, shape, position), whether a segment
follows its prompt, and whether a story is continuous (docs/shapes_world.md).

It reads pixels only, so it judges generated video exactly as it judges rendered video.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from phenaki_jax.data.shapes_world.captions import parse_prompt
from phenaki_jax.data.shapes_world.render import COLORS, PALETTE, check_resolution, speed

# Judge thresholds, from the spec.
FOREGROUND_THRESHOLD = 127  # foreground: largest channel strictly above this
SQUARE_MIN_FILL = 0.9  # fill ratio > 0.9: square
CIRCLE_MIN_FILL = 0.7  # 0.7 <= fill ratio <= 0.9: circle; below: triangle
STILL_SPEED = 0.35  # in units of v per frame: slower than this on average is still
MAX_JUMP = 3.0  # in units of v: a larger consecutive-frame centroid jump breaks continuity
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)  # [7, 3]


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
