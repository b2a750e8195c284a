"""Tests of the shapes world (docs/shapes_world.md): renderer, captions, splits.

Golden values come from the spec and from pixel counts worked out by hand; checks on generated
examples read the pixels rather than trusting the generator's own metadata.
"""

import collections

import numpy as np
import pytest
from conftest import SPEC_PALETTE

from phenaki_jax.data import features
from phenaki_jax.data import shapes_world as sw

SPEC_HELD_OUT = {
    ("magenta", "triangle"),
    ("cyan", "circle"),
    ("yellow", "square"),
    ("white", "triangle"),
}
SPEC_VELOCITY = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}

# S = 8 masks, worked out by hand from the pixel-centre rules.
CIRCLE_8 = """
..####..
.######.
########
########
########
########
.######.
..####..
"""
TRIANGLE_8 = """
........
...##...
...##...
..####..
..####..
.######.
.######.
########
"""


def _parse_mask(text):
    return np.array([[c == "#" for c in row] for row in text.split()], dtype=bool)


def _circle_count(size):
    # Independent float form of "pixel centre within S/2 of the box centre".
    c = np.arange(size) + 0.5 - size / 2
    return int(((c[None, :] ** 2 + c[:, None] ** 2) <= (size / 2) ** 2).sum())


def _full_count(shape, resolution):
    s = resolution // 4
    return {"square": s * s, "circle": _circle_count(s), "triangle": s * s // 2}[shape]


def _foreground(frame):
    return frame.max(axis=-1) > 0  # the background is exactly black


def _bbox(frame):
    rows, cols = np.nonzero(_foreground(frame))
    return cols.min(), rows.min(), cols.max(), rows.max()


def _colors_in(frame):
    return {tuple(int(c) for c in px) for px in frame[_foreground(frame)]}


def _color_name(frame):
    (rgb,) = _colors_in(frame)
    return next(name for name, value in SPEC_PALETTE.items() if value == rgb)


def _shape_name(frame, resolution):
    count = int(_foreground(frame).sum())
    return next(s for s in sw.SHAPES if _full_count(s, resolution) == count)


# ----------------------------------------------------------------------------- constants


def test_constants_follow_the_spec():
    assert sw.PALETTE == SPEC_PALETTE
    assert list(sw.PALETTE) == list(SPEC_PALETTE)  # spec order
    assert sw.SHAPES == ("square", "circle", "triangle")
    assert sw.DIRECTIONS == ("left", "right", "up", "down", "still")
    assert sw.HELD_OUT == frozenset(SPEC_HELD_OUT)
    assert sw.NUM_FRAMES == 11 and features.FPS == 8 and sw.NUM_FRAMES / features.FPS == 1.375
    assert sw.CONTINUATION_SPLIT == 5
    assert sw.SPLITS == ("train", "validation", "test")
    assert len(sw.VIDEO_PAIRS) == 17 and not set(sw.VIDEO_PAIRS) & SPEC_HELD_OUT


@pytest.mark.parametrize("resolution,size,v", [(32, 8, 1), (64, 16, 2), (128, 32, 4), (256, 64, 8)])
def test_size_and_speed(resolution, size, v):
    assert sw.object_size(resolution) == size
    assert sw.speed(resolution) == v
    for direction, (ux, uy) in SPEC_VELOCITY.items():
        assert sw.velocity(direction, resolution) == (ux * v, uy * v)


@pytest.mark.parametrize("bad", [0, -32, 16, 33, 48, 100, 32.0, True, "32", None])
def test_bad_resolution_raises(bad):
    with pytest.raises(ValueError, match="multiple of 32"):
        sw.object_size(bad)
    with pytest.raises(ValueError, match="multiple of 32"):
        sw.speed(bad)


# ----------------------------------------------------------------------------- renderer


def test_masks_at_r32_match_hand_derivation():
    np.testing.assert_array_equal(sw.shape_mask("square", 8), np.ones((8, 8), bool))
    np.testing.assert_array_equal(sw.shape_mask("circle", 8), _parse_mask(CIRCLE_8))
    np.testing.assert_array_equal(sw.shape_mask("triangle", 8), _parse_mask(TRIANGLE_8))
    assert sw.render_frame("circle", "red", 0, 0, 32).any(-1).sum() == 52
    assert sw.render_frame("triangle", "red", 0, 0, 32).any(-1).sum() == 32


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_mask_counts_and_symmetry(resolution):
    s = resolution // 4
    circle, triangle = sw.shape_mask("circle", s), sw.shape_mask("triangle", s)
    assert sw.shape_mask("square", s).sum() == s * s
    assert circle.sum() == _circle_count(s)
    assert abs(circle.sum() / (np.pi * s * s / 4) - 1) < 0.05
    for m in (circle, circle[::-1], circle[:, ::-1], circle.T):
        np.testing.assert_array_equal(m, circle)
    # Triangle: area S^2 / 2 exactly, left-right symmetric, rows widen downward to a full base.
    assert triangle.sum() == s * s // 2
    np.testing.assert_array_equal(triangle, triangle[:, ::-1])
    widths = triangle.sum(axis=1)
    np.testing.assert_array_equal(widths, 2 * ((np.arange(s) + 1) // 2))
    assert widths[-1] == s and widths[0] == 0


@pytest.mark.parametrize("color", list(SPEC_PALETTE))
def test_render_colours_and_placement(color):
    r, s = 64, 16
    for shape in sw.SHAPES:
        frame = sw.render_frame(shape, color, 5, 30, r)
        assert frame.shape == (r, r, 3) and frame.dtype == np.uint8
        assert _colors_in(frame) == {SPEC_PALETTE[color]}  # no anti-aliasing
        fg = _foreground(frame)
        assert not fg[:30].any() and not fg[30 + s :].any()
        assert not fg[:, :5].any() and not fg[:, 5 + s :].any()
    x0, y0, x1, y1 = _bbox(sw.render_frame("square", color, 5, 30, r))
    assert (x0, y0, x1, y1) == (5, 30, 5 + s - 1, 30 + s - 1)


def test_render_corners_and_clipping():
    r, s = 32, 8
    assert _bbox(sw.render_frame("square", "red", 0, 0, r)) == (0, 0, s - 1, s - 1)
    assert _bbox(sw.render_frame("square", "red", r - s, r - s, r)) == (r - s, r - s, r - 1, r - 1)
    clipped = sw.render_frame("square", "red", -3, r - 2, r)
    assert _foreground(clipped).sum() == (s - 3) * 2
    assert not sw.render_frame("square", "red", r, 0, r).any()
    with pytest.raises(ValueError):
        sw.render_frame("hexagon", "red", 0, 0, r)
    with pytest.raises(ValueError):
        sw.render_frame("square", "purple", 0, 0, r)


# ----------------------------------------------------------------------------- captions


def test_captions_follow_the_grammar():
    assert sw.caption_video("red", "square", "left") == "a red square moves left"
    assert sw.caption_video("cyan", "triangle", "down") == "a cyan triangle moves down"
    assert sw.caption_video("white", "circle", "still") == "a white circle stays still"
    assert sw.caption_image("magenta", "triangle") == "a magenta triangle"
    for color in SPEC_PALETTE:
        for shape in sw.SHAPES:
            assert sw.parse_prompt(f"a {color} {shape}") == (color, shape, None)
            for d in ("left", "right", "up", "down"):
                assert sw.parse_prompt(f"a {color} {shape} moves {d}") == (color, shape, d)
            assert sw.parse_prompt(f"a {color} {shape} stays still") == (color, shape, "still")


@pytest.mark.parametrize(
    "text",
    [
        "a red square moves still",
        "a red square stays left",
        "A red square moves left",
        "a red square moves left.",
        "a red square  moves left",
        " a red square",
        "a purple square",
        "a red hexagon moves up",
        "red square moves up",
        "a red square moves",
        "",
    ],
)
def test_parse_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="grammar"):
        sw.parse_prompt(text)


# ----------------------------------------------------------------------------- examples


def _check_video_pixels(ex, resolution, steps):
    """Object whole in every frame, exact colours, per-frame displacement exactly `steps`."""
    v = resolution // 32
    assert ex.frames.shape == (11, resolution, resolution, 3) and ex.frames.dtype == np.uint8
    boxes = [_bbox(f) for f in ex.frames]
    for f in ex.frames:
        # A full pixel count means nothing was clipped: the object is inside the canvas.
        assert _foreground(f).sum() == _full_count(ex.shape, resolution)
    for t in range(1, 11):
        dx, dy = boxes[t][0] - boxes[t - 1][0], boxes[t][1] - boxes[t - 1][1]
        ux, uy = SPEC_VELOCITY[steps[t - 1]]
        assert (dx, dy) == (ux * v, uy * v)
    for t, (x, y) in enumerate(ex.positions):
        assert 0 <= x <= resolution - resolution // 4 and 0 <= y <= resolution - resolution // 4
        np.testing.assert_array_equal(
            ex.frames[t], sw.render_frame(ex.shape, _color_name(ex.frames[t]), x, y, resolution)
        )
    assert ex.start == ex.positions[0]


@pytest.mark.parametrize("resolution,count", [(32, 120), (64, 40), (128, 15)])
def test_video_examples(resolution, count):
    for split in sw.SPLITS:
        for i in range(count):
            ex = sw.video_example(split, i, resolution)
            assert ex.kind == "video" and ex.first_color is None
            _check_video_pixels(ex, resolution, [ex.direction] * 10)
            assert {_color_name(f) for f in ex.frames} == {ex.color}
            assert _shape_name(ex.frames[0], resolution) == ex.shape
            assert ex.caption == sw.caption_video(ex.color, ex.shape, ex.direction)


@pytest.mark.parametrize("resolution,count", [(32, 120), (64, 40), (128, 15)])
def test_continuation_examples(resolution, count):
    for split in sw.SPLITS:
        for i in range(count):
            ex = sw.continuation_example(split, i, resolution)
            assert ex.kind == "continuation"
            steps = [ex.first_direction] * 4 + [ex.direction] * 6
            _check_video_pixels(ex, resolution, steps)
            colors = [_color_name(f) for f in ex.frames]
            assert colors == [ex.first_color] * 5 + [ex.color] * 6
            assert ex.first_color != ex.color
            shapes = {_shape_name(f, resolution) for f in ex.frames}
            assert shapes == {ex.shape}
            assert ex.caption == sw.caption_video(ex.color, ex.shape, ex.direction)


def test_image_examples_show_every_pair():
    r, s = 32, 8
    pairs = collections.Counter()
    xs, ys = [], []
    for i in range(1500):
        ex = sw.image_example("train", i, r)
        assert ex.frames.shape == (1, r, r, 3) and ex.kind == "image" and ex.direction is None
        color, shape = _color_name(ex.frames[0]), _shape_name(ex.frames[0], r)
        assert (color, shape) == (ex.color, ex.shape)
        assert ex.caption == f"a {color} {shape}"
        pairs[(color, shape)] += 1
        xs.append(ex.start[0])
        ys.append(ex.start[1])
    assert set(pairs) == {(c, sh) for c in SPEC_PALETTE for sh in sw.SHAPES}  # held-out too
    assert min(xs) == 0 and max(xs) == r - s and min(ys) == 0 and max(ys) == r - s


def test_held_out_pairs_never_move():
    r = 32
    for split in sw.SPLITS:
        for i in range(2000):
            video = sw.video_example(split, i, r)
            cont = sw.continuation_example(split, i, r)
            for frame in (video.frames[0], video.frames[10], cont.frames[0], cont.frames[10]):
                pair = (_color_name(frame), _shape_name(frame, r))
                assert pair not in SPEC_HELD_OUT, (split, i, pair)


def test_video_sampling_is_uniform_over_pairs_directions_and_starts():
    r, s, n = 32, 8, 3000
    pairs, directions = collections.Counter(), collections.Counter()
    starts = collections.defaultdict(list)
    for i in range(n):
        ex = sw.video_example("train", i, r)
        pairs[(ex.color, ex.shape)] += 1
        directions[ex.direction] += 1
        starts[ex.direction].append(ex.start)
    assert len(pairs) == 17
    assert all(0.6 < c / (n / 17) < 1.4 for c in pairs.values())
    assert all(0.85 < c / (n / 5) < 1.15 for c in directions.values())
    travel = 10  # 10 steps of v = 1
    bounds = {
        "left": ((travel, r - s), (0, r - s)),
        "right": ((0, r - s - travel), (0, r - s)),
        "up": ((0, r - s), (travel, r - s)),
        "down": ((0, r - s), (0, r - s - travel)),
        "still": ((0, r - s), (0, r - s)),
    }
    for direction, ((xlo, xhi), (ylo, yhi)) in bounds.items():
        xs, ys = np.array(starts[direction]).T
        assert (xs.min(), xs.max(), ys.min(), ys.max()) == (xlo, xhi, ylo, yhi), direction


def test_determinism_and_disjoint_splits():
    for make in (sw.image_example, sw.video_example, sw.continuation_example):
        a, b = make("test", 17, 64), make("test", 17, 64)
        np.testing.assert_array_equal(a.frames, b.frames)
        assert (a.caption, a.start, a.positions) == (b.caption, b.start, b.positions)
        streams = {
            split: [(e.caption, e.start) for e in (make(split, i) for i in range(200))]
            for split in sw.SPLITS
        }
        for s1, s2 in [("train", "validation"), ("train", "test"), ("validation", "test")]:
            same = sum(x == y for x, y in zip(streams[s1], streams[s2], strict=True))
            assert same < 20, (make.__name__, s1, s2)
        assert len(set(streams["train"])) > 150


def test_index_has_the_same_caption_at_every_resolution():
    for i in range(20):
        captions = {sw.continuation_example("train", i, r).caption for r in (32, 64, 128)}
        assert len(captions) == 1


def test_bad_split_and_index_raise():
    with pytest.raises(ValueError, match="split"):
        sw.video_example("eval", 0)
    with pytest.raises(ValueError, match="index"):
        sw.video_example("train", -1)
    with pytest.raises(ValueError, match="multiple of 32"):
        sw.video_example("train", 0, 40)


def test_mixed_examples():
    n = 4000
    kinds = collections.Counter(sw.mixed_kind("train", i) for i in range(n))
    assert abs(kinds["image"] / n - 0.2) < 0.03
    assert abs(kinds["continuation"] / n - 0.2) < 0.03  # 0.25 of the 0.8 video share
    assert abs(kinds["video"] / n - 0.6) < 0.03
    only_video = collections.Counter(sw.mixed_kind("train", i, 0.0, 0.0) for i in range(300))
    assert set(only_video) == {"video"}
    for i in range(30):
        kind = sw.mixed_kind("validation", i, 0.3, 0.5)
        ex = sw.mixed_example("validation", i, 32, 0.3, 0.5)
        assert ex.kind == kind
        ref = {"image": sw.image_example, "video": sw.video_example}.get(
            kind, sw.continuation_example
        )("validation", i, 32)
        np.testing.assert_array_equal(ex.frames, ref.frames)
    with pytest.raises(ValueError):
        sw.mixed_example("train", 0, 32, 1.5, 0.25)


# ----------------------------------------------------------------------------- judge
