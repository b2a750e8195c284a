"""The story editor's engine: the models loaded once, one worker generating the queued jobs in
order, and the stories it wrote, each in OUTPUT_DIR/stories as `phenaki-story` writes it.

One worker runs the decoder, so concurrent requests wait in the queue instead of racing for it;
each job writes its own story id, chosen here (never a name a request gives), through the
atomic writers of `story_io`. Editing makes a new story that keeps the first segments of an
earlier one bit-identical (`--from_segment`'s path), so earlier results stay as they were.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import queue
import re
import threading
import traceback
import uuid
from typing import Any

import numpy as np
from absl import logging

from phenaki_jax import storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data import media
from phenaki_jax.decoding import SamplingSettings
from phenaki_jax.inference.story import StoryDecoder
from phenaki_jax.inference.story_io import Story, StoryError, read_kept, write_result

STORY_ID = re.compile(r"^s[0-9]{4,}-[0-9a-f]{8}$")
FILE_KINDS = {"mp4": ".mp4", "gif": ".gif", "npy": ".npy", "json": ".json"}
MAX_PROMPTS = 200
MAX_PROMPT_CHARS = 1000
LIMITS = {"num_steps": 64, "refine_sweeps": 8, "candidates": 8}


class RequestError(ValueError):
    """A request the service refuses; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class StoryRequest:
    """What one Generate (or Regenerate) asks for. `parent` and `from_segment`: keep the
    parent story's segments 0 .. from_segment-1 and generate the rest."""

    prompts: list[str]
    seed: int = 0
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    image: str | None = None  # an upload's path, already validated
    video: str | None = None
    parent: str | None = None
    from_segment: int | None = None


@dataclasses.dataclass
class Job:
    id: str
    story_id: str
    request: StoryRequest
    state: str = "queued"  # queued, running, done, failed
    done: int = 0
    total: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "story": self.story_id, "state": self.state, "done": self.done,
                "total": self.total, "error": self.error,
                "prompts": self.request.prompts, "parent": self.request.parent,
                "from_segment": self.request.from_segment}


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise RequestError("prompts: give at least one prompt, one per line")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"prompts: at most {MAX_PROMPTS} prompts, got {len(prompts)}")
    long = next((p for p in prompts if len(p) > MAX_PROMPT_CHARS), None)
    if long is not None:
        raise RequestError(f"prompts: a prompt is longer than {MAX_PROMPT_CHARS} characters "
                           f"({long[:40]!r}...)")
    return prompts


class StoryService:
    """The decoder and the job queue behind `phenaki-serve`."""

    def __init__(self, workdir: str, output_dir: str, cond_frames: int = 5,
                 max_queued: int = 16) -> None:
        self.decoder = StoryDecoder(workdir, cond_frames, batch_size=1)
        self.defaults = self.decoder.sampling
        self.output_dir = os.path.abspath(output_dir)
        self.stories_dir = os.path.join(self.output_dir, "stories")
        self.uploads_dir = os.path.join(self.output_dir, "uploads")
        os.makedirs(self.stories_dir, exist_ok=True)
        os.makedirs(self.uploads_dir, exist_ok=True)
        self.max_queued = max_queued
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._gif_lock = threading.Lock()
        taken = [int(m.group(1)) for m in (re.match(r"^s([0-9]+)-", f)
                                           for f in os.listdir(self.stories_dir)) if m]
        self._numbers = itertools.count(max(taken, default=0) + 1)
        self._worker = threading.Thread(target=self._work, name="story-worker", daemon=True)
        self._worker.start()

    # -- what the page reads ---------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        d = self.decoder
        return {"sampling": self.defaults.as_dict(), "cond_frames": d.cond_frames,
                "num_frames": d.num_frames, "resolution": d.resolution,
                "transformer_step": d.transformer_step, "max_prompts": MAX_PROMPTS}

    def stories(self) -> list[dict[str, Any]]:
        """Every story in the output folder, newest first (earlier runs' too)."""
        out = []
        for name in sorted(os.listdir(self.stories_dir), reverse=True):
            stem, ext = os.path.splitext(name)
            if ext == ".json" and STORY_ID.match(stem):
                out.append(self.story(stem))
        return out

    def story(self, story_id: str) -> dict[str, Any]:
        if not STORY_ID.match(story_id) or not os.path.isfile(self.path(story_id, "json")):
            raise RequestError(f"story {story_id} does not exist", 404)
        manifest = json.loads(storage.read_text(self.path(story_id, "json")))
        keys = ("id", "num_frames", "segments", "prompts", "seed", "segment_seeds", "parent",
                "from_segment", "guidance_scale", "num_steps", "temperature",
                "choice_temperature", "refine_sweeps", "time_bias", "candidates",
                "candidate_guidance", "model")
        return {k: manifest.get(k) for k in keys}

    def path(self, story_id: str, kind: str) -> str:
        """The file of a story: only ids this service makes and the four kinds it writes, so
        no request can name a path outside the output folder."""
        if not STORY_ID.match(story_id) or kind not in FILE_KINDS:
            raise RequestError(f"no such file: {story_id}.{kind}", 404)
        return os.path.join(self.stories_dir, story_id + FILE_KINDS[kind])

    def file(self, story_id: str, kind: str) -> str:
        """An existing file of a story; the gif is made from the exact frames when first
        asked for."""
        path = self.path(story_id, kind)
        if kind == "gif" and not os.path.isfile(path) and os.path.isfile(self.path(story_id,
                                                                                 "npy")):
            with self._gif_lock:
                if not os.path.isfile(path):
                    frames = np.load(self.path(story_id, "npy"), allow_pickle=False)
                    media.write_video(path, frames)
        if not os.path.isfile(path):
            raise RequestError(f"no such file: {story_id}.{kind}", 404)
        return path

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(f"job {job_id} does not exist", 404)
        return job

    # -- what the page asks for ------------------------------------------------------------
    def sampling(self, values: dict[str, Any]) -> SamplingSettings:
        """The checkpoint's sampling settings with a request's changes, validated as the
        commands' flags are; the step and candidate counts are bounded (each new count
        compiles anew, and candidates multiply the decoding)."""
        for name, high in LIMITS.items():
            if name in values and not 0 <= values[name] <= high:
                raise RequestError(f"{name}: must be in [0, {high}], got {values[name]}")
        try:
            return SamplingSettings.from_config(self.decoder.config.sampling,
                                                **{**self.defaults.as_dict(), **values})
        except ConfigError as e:
            raise RequestError(str(e).replace("--", "")) from e

    def check(self, request: StoryRequest) -> None:
        """Refuses what can be refused before anything is stored or generated."""
        self.sampling(request.sampling)
        if request.image and request.video:
            raise RequestError("give an image or a video, not both", 400)
        if request.parent is not None:
            parent = self.story(request.parent)
            k, n = request.from_segment, len(parent["segments"])
            if not isinstance(k, int) or not 1 <= k <= n:
                raise RequestError(f"from_segment must be in [1, {n}] for story "
                                   f"{request.parent}, which has {n} segments")
            if len(request.prompts) <= k:
                raise RequestError(f"from_segment={k} needs more than {k} prompts, got "
                                   f"{len(request.prompts)}")
            for i, (old, new) in enumerate(zip(parent["prompts"][:k], request.prompts,
                                               strict=False)):
                if old != new:
                    raise RequestError(f"prompt {i + 1} differs from segment {i + 1} of story "
                                       f"{request.parent}, which is kept; regenerate from "
                                       f"segment {i + 1}")

    def submit(self, request: StoryRequest) -> Job:
        """Queues a request that `check` has passed (uploads stored after it); 429 when the
        queue is full."""
        with self._lock:
            waiting = sum(j.state in ("queued", "running") for j in self.jobs.values())
            if waiting >= self.max_queued:
                raise RequestError(f"the queue is full ({waiting} stories waiting); try again "
                                   "when one is done", 429)
            story_id = f"s{next(self._numbers):04d}-{uuid.uuid4().hex[:8]}"
            job = Job(uuid.uuid4().hex[:12], story_id, request, total=len(request.prompts))
            self.jobs[job.id] = job
        self._queue.put(job)
        return job

    # -- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            job.state = "running"
            try:
                self._run(job)
                job.state = "done"
            except (RequestError, StoryError, media.MediaError) as e:
                job.state, job.error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - the server goes on with the next job
                logging.error("story job %s failed:\n%s", job.id, traceback.format_exc())
                job.state, job.error = "failed", f"internal error: {type(e).__name__}: {e}"

    def _run(self, job: Job) -> None:
        r = job.request
        story = Story(job.story_id, list(r.prompts), r.seed, r.image, r.video)
        self.decoder.sampling = self.sampling(r.sampling)
        settings = self.decoder.settings()
        extra: dict[str, Any] = {}
        if r.parent is not None:
            manifest, kept = read_kept(self.path(r.parent, "mp4"), r.from_segment or 0,
                                       settings)
            story.kept, story.image, story.video = kept, manifest.get("image"), manifest.get(
                "video")
            extra = {"parent": r.parent, "from_segment": r.from_segment}
            job.done = len(kept.segments)

        def on_segment(done: int, total: int) -> None:
            job.done = len(r.prompts) - total + done

        result = self.decoder.generate([story], on_segment=on_segment)[0]
        write_result(result, self.path(job.story_id, "mp4"), {**settings, **extra})
