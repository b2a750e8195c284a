"""Tests of the shapes world's judge (docs/shapes_world.md): what a frame shows, whether a
segment follows its prompt, whether a story is continuous; golden values from the rules and
from hand-built frames, and the judge recovering rendered examples."""

import numpy as np
import pytest
from conftest import SPEC_PALETTE

from phenaki_jax.data import shapes_world as sw
from phenaki_jax.evaluation import judge


def _block_frame(r=32, color=(255, 0, 0), rows=slice(4, 12), cols=slice(6, 14)):
    frame = np.zeros((r, r, 3), np.uint8)
    frame[rows, cols] = color
    return frame


def test_judge_frame_foreground_colour_and_centroid():
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[3, 3] = (127, 127, 127)
    assert judge.judge_frame(frame, 32)["has_foreground"] is False
    assert judge.judge_frame(frame, 32)["color"] is None
    frame[3, 4] = (128, 0, 0)
    j = judge.judge_frame(frame, 32)
    assert j["has_foreground"] and j["color"] == "red" and j["centroid"] == (4.0, 3.0)

    j = judge.judge_frame(_block_frame(color=(200, 200, 40)), 32)
    assert j["color"] == "yellow" and j["shape"] == "square" and j["num_pixels"] == 64
    assert j["centroid"] == (9.5, 7.5)
    assert judge.judge_frame(_block_frame(color=(100, 0, 200)), 32)["color"] == "blue"
    assert judge.judge_frame(_block_frame(color=(140, 140, 140)), 32)["color"] == "white"
    # Dim pixels are background: they move neither the colour nor the centroid.
    frame = _block_frame(rows=slice(10, 12), cols=slice(20, 22))
    frame[0:5, 0:5] = (100, 100, 100)
    j = judge.judge_frame(frame, 32)
    assert (j["color"], j["centroid"], j["num_pixels"]) == ("red", (20.5, 10.5), 4)


@pytest.mark.parametrize(
    "kept,shape",
    [(100, "square"), (91, "square"), (90, "circle"), (70, "circle"), (69, "triangle")],
)
def test_judge_fill_ratio_thresholds(kept, shape):
    frame = _block_frame(rows=slice(0, 10), cols=slice(0, 10))
    interior = [(i, j) for i in range(1, 9) for j in range(1, 9)]  # keeps the 10x10 bbox
    for i, j in interior[: 100 - kept]:
        frame[i, j] = 0
    j = judge.judge_frame(frame, 32)
    assert j["num_pixels"] == kept and j["fill_ratio"] == kept / 100
    assert j["shape"] == shape


def test_judge_frame_on_rendered_shapes():
    for r in (32, 64, 128):
        for shape in sw.SHAPES:
            for color in SPEC_PALETTE:
                j = judge.judge_frame(sw.render_frame(shape, color, 1, 2, r), r)
                assert (j["color"], j["shape"]) == (color, shape)
    with pytest.raises(ValueError):
        judge.judge_frame(np.zeros((32, 32, 3), np.uint8), 64)


def test_segment_direction_thresholds():
    def path(dx, dy, steps=10):
        return [(5 + dx * t / steps, 7 + dy * t / steps) for t in range(steps + 1)]

    assert judge.segment_direction(path(3.4, 0), 32) == "still"  # 0.34 v per frame
    assert judge.segment_direction(path(3.6, 0), 32) == "right"
    assert judge.segment_direction(path(-3.6, 0), 32) == "left"
    assert judge.segment_direction(path(1, -5), 32) == "up"
    assert judge.segment_direction(path(-1, 5), 32) == "down"
    assert judge.segment_direction(path(2.4, 2.4), 32) == "still"  # |d| = 3.39 < 3.5
    assert judge.segment_direction(path(4, 4), 32) == "right"  # tie goes horizontal
    assert judge.segment_direction(path(6, 0), 64) == "still"  # v = 2: 0.6 < 0.7
    assert judge.segment_direction(path(8, 0), 64) == "right"
    # Only the first and last centroids count, and frames without foreground are skipped.
    assert judge.segment_direction([(0, 0), (9, 0), (0, 0)], 32) == "still"
    assert judge.segment_direction([None, (0, 0), None, (0, 4), None], 32) == "down"
    assert judge.segment_direction([(0, 0)], 32) is None
    assert judge.segment_direction([None, None], 32) is None


def _moving_block(color_per_frame, dx=1, dy=0, r=32, start=(4, 6)):
    frames = np.zeros((len(color_per_frame), r, r, 3), np.uint8)
    for t, color in enumerate(color_per_frame):
        x, y = start[0] + dx * t, start[1] + dy * t
        frames[t, y : y + 8, x : x + 8] = SPEC_PALETTE[color]
    return frames


def test_judge_segment_on_hand_built_frames():
    frames = _moving_block(["red"] * 11)
    j = judge.judge_segment(frames, "a red square moves right", 32)
    assert j["adheres"] and (j["color"], j["shape"], j["direction"]) == ("red", "square", "right")
    assert not judge.judge_segment(frames, "a red square moves left", 32)["adheres"]
    assert not judge.judge_segment(frames, "a red square stays still", 32)["adheres"]
    assert not judge.judge_segment(frames, "a blue square moves right", 32)["adheres"]
    assert not judge.judge_segment(frames, "a red circle moves right", 32)["adheres"]
    assert judge.judge_segment(frames, "a red square", 32)["adheres"]  # image prompt: no direction
    # Majority colour over frames.
    mixed = _moving_block(["red"] * 6 + ["blue"] * 5)
    assert judge.judge_segment(mixed, "a red square moves right", 32)["color"] == "red"
    still = _moving_block(["green"] * 11, dx=0)
    assert judge.judge_segment(still, "a green square stays still", 32)["adheres"]
    with pytest.raises(ValueError, match="grammar"):
        judge.judge_segment(frames, "a red square moves sideways", 32)


def test_judge_story_continuity():
    frames = _moving_block(["red"] * 6 + ["blue"] * 5)
    segments = [("a red square moves right", 0, 6), ("a blue square moves right", 6, 11)]
    j = judge.judge_story(frames, segments, 32)
    assert j["segment_adherence"] == [True, True] and j["all_adhere"] and j["adherence"] == 1.0
    assert j["continuous"] and j["all_foreground"] and j["max_jump"] == 1.0
    # A jump of exactly 3 v is allowed; 4 v is not.
    for jump, continuous in ((3, True), (4, False)):
        teleport = frames.copy()
        teleport[6:] = np.roll(frames[6:], jump - 1, axis=2)
        j = judge.judge_story(teleport, segments, 32)
        assert j["max_jump"] == jump and j["continuous"] is continuous
    blank = frames.copy()
    blank[7] = 0
    j = judge.judge_story(blank, segments, 32)
    assert not j["continuous"] and not j["all_foreground"]
    j = judge.judge_story(frames, [("a red square moves left", 0, 6)] + segments[1:], 32)
    assert j["segment_adherence"] == [False, True] and j["adherence"] == 0.5
    with pytest.raises(ValueError):
        judge.judge_story(frames, [("a red square moves right", 5, 12)], 32)


@pytest.mark.parametrize("resolution,count", [(32, 150), (64, 60), (128, 30)])
def test_judge_recovers_generated_examples(resolution, count):
    r = resolution
    for i in range(count):
        video = sw.video_example("test", i, r)
        j = judge.judge_segment(video.frames, video.caption, r)
        assert j["adheres"], (i, video.caption, j["color"], j["shape"], j["direction"])
        assert (j["color"], j["shape"], j["direction"]) == (
            video.color,
            video.shape,
            video.direction,
        )

        cont = sw.continuation_example("test", i, r)
        first = sw.caption_video(cont.first_color, cont.shape, cont.first_direction)
        story = judge.judge_story(cont.frames, [(first, 0, 5), (cont.caption, 5, 11)], r)
        assert story["segment_adherence"] == [True, True] and story["continuous"], i
        assert story["max_jump"] <= sw.speed(r)
        assert judge.judge_segment(cont.frames[5:], cont.caption, r)["direction"] == cont.direction

        image = sw.image_example("test", i, r)
        assert judge.judge_segment(image.frames, image.caption, r)["adheres"]
