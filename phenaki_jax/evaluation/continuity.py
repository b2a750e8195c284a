"""Continuity of long stories, frame step by frame step (the library behind
`benchmarks/story_continuity.py`).

A frame step (frame i to i + 1) breaks continuity when either frame has no object or the
object's centroid moves more than `judge.MAX_JUMP` v (the judge's story rule, applied to each
step instead of to the whole story). Each step is placed in the clip that produced its later
frame: the first prompt's clip decodes frames 0 | 1 2 | 3 4 | ... (a first frame alone, then
tubelets of two), and each later prompt's clip re-encodes the story's last K frames as its
frames 0 .. K - 1 and appends its frames K .. 10. So every step is one of

* `seam`: from the story's last frame to a continuation's first new frame (clip frame K);
* `tubelet_boundary`: into the first frame of a tubelet of the same clip (clip frame odd);
* `within_tubelet`: between the two frames of one tubelet (clip frame even).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from phenaki_jax.data.shapes_world import speed
from phenaki_jax.evaluation import judge

PLACES = ("seam", "tubelet_boundary", "within_tubelet")


def step_places(segments: Sequence[dict], cond_frames: int) -> list[str]:
    """The place (one of `PLACES`) of every frame step of a story whose `segments` are the
    decoder's (`start_frame`, `end_frame`) records: the first from frame 0, each later one
    continuing from the `cond_frames` frames before its start."""
    places = []
    for n, seg in enumerate(segments):
        # A story that continues a given video starts with that video's K re-encoded frames:
        # its first segment is a continuation whose clip begins at frame 0.
        continues = n > 0 or seg["start_frame"] > 0
        origin = seg["start_frame"] - cond_frames if n else 0  # the clip's frame 0
        for frame in range(seg["start_frame"] if n else 1, seg["end_frame"]):
            c = frame - origin
            places.append("seam" if continues and c == cond_frames else
                          "tubelet_boundary" if c % 2 else "within_tubelet")
    return places


def breaks(frames: np.ndarray, resolution: int) -> list[bool]:
    """For each frame step of `frames` (uint8 [T, R, R, 3]): does it break continuity?"""
    return _breaks([judge.judge_frame(f, resolution)["centroid"] for f in frames], resolution)


def _breaks(centroids: Sequence[tuple[float, float] | None], resolution: int) -> list[bool]:
    limit = judge.MAX_JUMP * speed(resolution)
    return [a is None or b is None or float(np.hypot(b[0] - a[0], b[1] - a[1])) > limit
            for a, b in zip(centroids[:-1], centroids[1:], strict=True)]


def summarize(results: Sequence[Any], resolution: int, cond_frames: int,
              edge_prompts: int = 10) -> dict[str, Any]:
    """Breaks per 1000 frame steps (in all and by place), and the segment adherence of the
    first and the last `edge_prompts` prompts of the stories (drift shows as a difference)."""
    counts = {p: [0, 0] for p in PLACES}  # place -> [breaks, steps]
    first, last, stories_broken = [], [], 0
    for r in results:
        segs = [(s["prompt"], s["start_frame"], s["end_frame"]) for s in r.segments]
        verdict = judge.judge_story(r.frames, segs, resolution)  # judges every frame once
        story_breaks = _breaks(verdict["centroids"], resolution)
        places = step_places(r.segments, cond_frames)
        if len(places) != len(story_breaks):
            raise ValueError(f"story {r.story.id}: its segments cover {len(places) + 1} frames, "
                             f"its video has {len(story_breaks) + 1}")
        for place, broke in zip(places, story_breaks, strict=True):
            counts[place][0] += broke
            counts[place][1] += 1
        stories_broken += any(story_breaks)
        ok = verdict["segment_adherence"]
        first.extend(ok[:edge_prompts])
        last.extend(ok[-edge_prompts:])
    total_breaks = sum(b for b, _ in counts.values())
    total_steps = sum(s for _, s in counts.values())
    return {
        "stories": len(results),
        "frame_steps": total_steps,
        "breaks": total_breaks,
        "breaks_per_1000_frame_steps": 1000.0 * total_breaks / max(total_steps, 1),
        "by_place": {p: {"breaks": b, "frame_steps": s,
                         "breaks_per_1000_frame_steps": 1000.0 * b / max(s, 1)}
                     for p, (b, s) in counts.items()},
        "stories_with_a_break": stories_broken,
        f"segment_adherence_first_{edge_prompts}": float(np.mean(first)) if first else 0.0,
        f"segment_adherence_last_{edge_prompts}": float(np.mean(last)) if last else 0.0,
    }
