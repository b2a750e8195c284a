"""Frame-step continuity of long stories: which steps break (the spec's rule: no object, or a
centroid jump over 3 v with v = R / 32) and where each step lies in the clips that made it."""

import numpy as np
import pytest

from phenaki_jax.evaluation import continuity
from phenaki_jax.inference.story_io import Result, Story

R = 32  # v = 1 px


def square_at(x: int, y: int = 12) -> np.ndarray:
    frame = np.zeros((R, R, 3), np.uint8)
    frame[y:y + 4, x:x + 4] = 255
    return frame


def test_places_of_a_first_clip_and_two_continuations():
    # Clip frames 0 | 1 2 | 3 4 | 5 6 | 7 8 | 9 10; each continuation re-encodes the last 5
    # frames as its frames 0..4 and adds its frames 5..10.
    segments = [{"start_frame": 0, "end_frame": 11}, {"start_frame": 11, "end_frame": 17},
                {"start_frame": 17, "end_frame": 23}]
    first = ["tubelet_boundary", "within_tubelet"] * 5
    continuation = ["seam", "within_tubelet", "tubelet_boundary", "within_tubelet",
                    "tubelet_boundary", "within_tubelet"]
    assert continuity.step_places(segments, 5) == first + continuation * 2
    # With 3 context frames, the new frames start at clip frame 3 (a tubelet's first).
    assert continuity.step_places(segments[:1] + [{"start_frame": 11, "end_frame": 19}], 3) \
        == first + ["seam", "within_tubelet", "tubelet_boundary", "within_tubelet",
                    "tubelet_boundary", "within_tubelet", "tubelet_boundary", "within_tubelet"]
    # A continued video: its 5 re-encoded frames, then the first new one across the seam.
    video = continuity.step_places([{"start_frame": 5, "end_frame": 11}], 5)
    assert video == first[:4] + continuation


def test_breaks_are_jumps_over_three_v_and_frames_without_an_object():
    xs = [2, 3, 4, 5, 6, 7, 11, 12, 13, None, 14, 15]  # a 4 px jump at step 5 -> 6
    frames = np.stack([np.zeros((R, R, 3), np.uint8) if x is None else square_at(x)
                       for x in xs])
    expected = [False] * 5 + [True, False, False, True, True, False]
    assert continuity.breaks(frames, R) == expected
    # Exactly 3 v is still continuous (the limit is "more than").
    assert continuity.breaks(np.stack([square_at(2), square_at(5)]), R) == [False]


def test_summary_counts_breaks_by_place_and_adherence_at_both_ends():
    # A 2-prompt story of a white square moving right 1 px a frame, 17 frames, with one jump
    # across the seam (frame 10 -> 11) and one inside a continuation's tubelet (13 -> 14).
    xs = list(range(2, 13)) + [17, 18, 19, 23, 24, 25]
    frames = np.stack([square_at(x) for x in xs])
    segments = [{"prompt": "a white square moves right", "start_frame": 0, "end_frame": 11},
                {"prompt": "a white square moves left", "start_frame": 11, "end_frame": 17}]
    story = Result(Story("s", [s["prompt"] for s in segments], 0), frames, segments, [0.0, 0.0])
    got = continuity.summarize([story], R, cond_frames=5, edge_prompts=1)
    assert got["frame_steps"] == 16 and got["breaks"] == 2
    assert got["breaks_per_1000_frame_steps"] == pytest.approx(125.0)
    assert {p: v["breaks"] for p, v in got["by_place"].items()} == {
        "seam": 1, "tubelet_boundary": 0, "within_tubelet": 1}
    assert {p: v["frame_steps"] for p, v in got["by_place"].items()} == {
        "seam": 1, "tubelet_boundary": 7, "within_tubelet": 8}
    assert got["stories_with_a_break"] == 1
    # The first prompt (right) is followed; the last (left) is not: the square moves right.
    assert got["segment_adherence_first_1"] == 1.0
    assert got["segment_adherence_last_1"] == 0.0
