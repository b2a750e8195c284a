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

from phenaki_jax import storage
from phenaki_jax.data import media
from phenaki_jax.data.features import FPS

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoryError(ValueError):
    """Bad story input (prompts, ids, images, flags); the message names it."""


@dataclasses.dataclass
class Kept:
    """The first segments of an earlier output of the same model, kept exactly as they were:
    their frames uint8 [T0, R, R, 3], segments (as in the manifest), token ids [t, h, w] and
    seeds, one per segment."""

    frames: np.ndarray
    segments: list[dict[str, Any]]
    ids: list[np.ndarray]
    seeds: list[int]
    seconds_per_prompt: list[float]


@dataclasses.dataclass
class Story:
    """One story to generate: its prompts and seed; optionally an image that becomes frame 0,
    a video whose last frames it continues, or earlier segments it keeps (`kept`, then
    prompts before `len(kept.segments)` are not generated again)."""

    id: str
    prompts: list[str]
    seed: int = 0
    image: str | None = None
    video: str | None = None
    kept: Kept | None = None


@dataclasses.dataclass
class Result:
    story: Story
    frames: np.ndarray  # uint8 [T, R, R, 3]
    segments: list[dict[str, Any]]
    seconds_per_prompt: list[float]
    ids: list[np.ndarray] = dataclasses.field(default_factory=list)  # per segment [t, h, w]
    seeds: list[int] = dataclasses.field(default_factory=list)  # per segment


def check_story_id(story_id: str) -> str:
    """An id is a file name stem: it can never write outside the output directory."""
    if not isinstance(story_id, str) or not _ID_RE.match(story_id) or ".." in story_id:
        raise StoryError(f"story id {story_id!r} must be 1-128 characters of letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")
    return story_id


def read_prompts(path: str) -> list[str]:
    if not storage.isfile(path):
        raise StoryError(f"--prompts_file not found: {path}")
    prompts = [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise StoryError(f"--prompts_file {path} holds no prompts (one per line)")
    return prompts


def read_stories(path: str) -> list[Story]:
    if not storage.isfile(path):
        raise StoryError(f"--stories file not found: {path}")
    stories, seen = [], set()
    for n, line in enumerate(storage.read_text(path).splitlines(), 1):
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
            image = image if os.path.isabs(image) or storage.is_remote(image) else (
                storage.join(os.path.dirname(storage.resolve(path)), image))
        stories.append(Story(sid, [p.strip() for p in prompts], seed, image))
    if not stories:
        raise StoryError(f"--stories {path} holds no stories")
    return stories


def write_result(result: Result, video_path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Writes VIDEO (mp4/gif by extension) and beside it: .npy (the exact frames), .json (the
    manifest) and .ids.npy (int32 [segments, t, h, w], each segment's token ids), all that
    `read_kept` needs to continue the story exactly."""
    stem = os.path.splitext(video_path)[0]
    manifest = {"id": result.story.id, "fps": FPS, "num_frames": int(result.frames.shape[0]),
                "segments": result.segments, "prompts": result.story.prompts,
                "seed": result.story.seed, "segment_seeds": result.seeds,
                "image": result.story.image, "video": result.story.video, **settings,
                "seconds_per_prompt": [round(x, 4) for x in result.seconds_per_prompt]}
    media.save_npy(stem + ".npy", result.frames)
    if result.ids:
        media.save_npy(stem + ".ids.npy", np.stack(result.ids).astype(np.int32))
    media.write_video(video_path, result.frames, fps=FPS)
    storage.write_text(stem + ".json", json.dumps(manifest, indent=2))
    return manifest


def read_kept(video_path: str, count: int, settings: dict[str, Any]) -> tuple[dict, Kept]:
    """(the manifest, its first `count` segments) of an earlier output at `video_path`,
    which the model and settings of `settings` (a decoder's) must have written."""
    stem = os.path.splitext(video_path)[0]
    for path in (stem + ".json", stem + ".npy", stem + ".ids.npy"):
        if not storage.isfile(path):
            raise StoryError(f"--from_segment needs the earlier story's {path}; it does not "
                             "exist")
    manifest = json.loads(storage.read_text(stem + ".json"))
    if manifest.get("model") != settings["model"]:
        raise StoryError(f"{stem}.json was written by another model (fingerprint "
                         f"{manifest.get('model')}), not the transformer in --workdir "
                         f"({settings['model']}); regenerate it whole")
    if manifest.get("cond_frames") != settings["cond_frames"]:
        raise StoryError(f"--cond_frames={settings['cond_frames']} differs from the "
                         f"{manifest.get('cond_frames')} the story in {stem}.json was told with")
    segments = manifest["segments"]
    if not 1 <= count <= len(segments):
        raise StoryError(f"--from_segment={count}: the story in {stem}.json has "
                         f"{len(segments)} segments; keep 1 to {len(segments)} of them")
    with storage.open_file(stem + ".npy") as f:
        frames = np.load(f, allow_pickle=False)
    with storage.open_file(stem + ".ids.npy") as f:
        ids = np.load(f, allow_pickle=False)
    if frames.shape[0] != manifest["num_frames"] or ids.shape[0] != len(segments):
        raise StoryError(f"{stem}.npy or .ids.npy do not match {stem}.json")
    seeds = manifest.get("segment_seeds") or [manifest["seed"]] * len(segments)
    end = segments[count - 1]["end_frame"]
    return manifest, Kept(frames[:end], segments[:count], list(ids[:count]), seeds[:count],
                          manifest.get("seconds_per_prompt", [0.0] * len(segments))[:count])
