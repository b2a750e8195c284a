"""A story's files: prompts and story lists in, video + frames + manifest out.

OUT.mp4 (or .gif) plays at 8 fps; beside it OUT.npy holds exactly its frames (uint8
[T, H, W, 3]) and OUT.json the segments (`start_frame`, exclusive `end_frame`, prompt) and the
settings. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from phenaki_jax.data import media
from phenaki_jax.data.features import FPS

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoryError(ValueError):
    """Bad story input (prompts, ids, images, flags); the message names it."""


@dataclasses.dataclass
class Story:
    id: str
    prompts: list[str]
    seed: int = 0
    image: str | None = None


@dataclasses.dataclass
class Result:
    story: Story
    frames: np.ndarray  # uint8 [T, R, R, 3]
    segments: list[dict[str, Any]]
    seconds_per_prompt: list[float]


def check_story_id(story_id: str) -> str:
    """An id is a file name stem: it can never write outside the output directory."""
    if not isinstance(story_id, str) or not _ID_RE.match(story_id) or ".." in story_id:
        raise StoryError(f"story id {story_id!r} must be 1-128 characters of letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")
    return story_id


def read_prompts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise StoryError(f"--prompts_file not found: {path}")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise StoryError(f"--prompts_file {path} holds no prompts (one per line)")
    return prompts


def read_stories(path: str) -> list[Story]:
    if not os.path.isfile(path):
        raise StoryError(f"--stories file not found: {path}")
    stories, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise StoryError(f"--stories {path} line {n} is not JSON: {e.msg}") from e
            if not isinstance(row, dict) or "id" not in row or "prompts" not in row:
                raise StoryError(f"--stories {path} line {n} needs \"id\" and \"prompts\"")
            prompts = row["prompts"]
            if (not isinstance(prompts, list) or not prompts
                    or not all(isinstance(p, str) and p.strip() for p in prompts)):
                raise StoryError(f"--stories {path} line {n}: \"prompts\" must be a non-empty "
                                 "list of non-empty strings")
            sid = check_story_id(row["id"])
            if sid in seen:
                raise StoryError(f"--stories {path} line {n}: story id {sid!r} is repeated")
            seen.add(sid)
            seed = row.get("seed", 0)
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise StoryError(f"--stories {path} line {n}: \"seed\" must be an integer")
            image = row.get("image")
            if image is not None:
                image = image if os.path.isabs(image) else os.path.join(
                    os.path.dirname(os.path.abspath(path)), image)
            stories.append(Story(sid, [p.strip() for p in prompts], seed, image))
    if not stories:
        raise StoryError(f"--stories {path} holds no stories")
    return stories


def write_result(result: Result, video_path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Writes VIDEO (mp4/gif by extension), .npy beside it and the .json manifest."""
    stem = os.path.splitext(video_path)[0]
    manifest = {"id": result.story.id, "fps": FPS, "num_frames": int(result.frames.shape[0]),
                "segments": result.segments, "prompts": result.story.prompts,
                "seed": result.story.seed, "image": result.story.image, **settings,
                "seconds_per_prompt": [round(x, 4) for x in result.seconds_per_prompt]}
    media.save_npy(stem + ".npy", result.frames)
    media.write_video(video_path, result.frames, fps=FPS)
    with media.atomic_path(stem + ".json") as tmp, open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
