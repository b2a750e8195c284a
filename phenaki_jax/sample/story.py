"""The story decoder behind phenaki-story (`phenaki_jax/story.py`): a sequence of prompts
becomes one video, from the two orbax checkpoints.

`phenaki-story --tokenizer_workdir=DIR --workdir=DIR2 --prompts_file=P.txt --output=OUT.mp4`
`phenaki-story --tokenizer_workdir=DIR --workdir=DIR2 --stories=S.jsonl --output_dir=OUTDIR`

Prompt 1 generates a whole clip (11 frames). Each further prompt re-encodes the story's last K
frames (`--cond_frames`, 1 + 2j of them) into known tokens, generates the remaining token frames
under the new prompt, and appends the 11 - K new frames. With `--image`, the image's tokens are
the known first token frame of prompt 1, so it becomes frame 0 and the prompt moves it.

Every generation call has the same shapes (a fixed batch of stories, the full token grid, the
known tokens given as data), so a story of 50 prompts compiles exactly as often as one of 2.
Each story draws from its own keys (seed, prompt index): its frames do not depend on which
other stories share its batch. Outputs are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

FPS = 8
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


class CompileCounter:
    """Counts XLA compilations in this process (JAX's backend-compile monitoring event)."""

    _count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        import jax

        def listener(event: str, duration: float, **kwargs: Any) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                cls._count += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        cls._installed = True

    @classmethod
    def count(cls) -> int:
        return cls._count


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


class StoryDecoder:
    """The tokenizer and the transformer restored onto this machine, with compiled steps."""

    def __init__(self, tokenizer_workdir: str, workdir: str, cond_frames: int = 5,
                 num_steps: int | None = None, guidance_scale: float | None = None,
                 temperature: float | None = None, batch_size: int = 8,
                 time_bias: float | None = None,
                 choice_temperature: float | None = None,
                 refine_sweeps: int | None = None) -> None:
        import jax

        from phenaki_jax.models.cvivit import float_to_frames, frames_to_float
        from phenaki_jax.train import checkpoint as ckpt_lib
        from phenaki_jax.train import maskgit_stage, trainer

        CompileCounter.install()
        for flag, path in (("--tokenizer_workdir", tokenizer_workdir), ("--workdir", workdir)):
            if not os.path.isdir(path):
                raise StoryError(f"{flag} {path} does not exist")
        tconfig, tstage, tstate = trainer.restore_for_inference(
            tokenizer_workdir, expected_stage="cvivit")
        _, mconfig = ckpt_lib.Checkpointer(workdir, read_only=True).latest_config()
        if mconfig.get("stage") != "maskgit":
            raise StoryError(f"--workdir {workdir} holds a {mconfig.get('stage')!r} "
                             "checkpoint, not a transformer ('maskgit')")
        try:
            maskgit_stage.check_tokenizer(mconfig, tconfig, f"--tokenizer_workdir "
                                          f"{tokenizer_workdir}")
        except Exception as e:
            raise StoryError(f"--workdir {workdir} does not fit --tokenizer_workdir: {e}") from e
        config, stage, state = trainer.restore_for_inference(workdir, expected_stage="maskgit",
                                                             tokenizer=tconfig)
        tok_vars = {"params": tstage.inference_params(tstate), **tstate.model_state}
        # The transformer holds a copy of the tokenizer it learned; every parameter must match
        # (two tokenizers may share a codebook and differ elsewhere).
        own = jax.tree_util.tree_leaves_with_path(jax.device_get(tok_vars["params"]))
        trained = jax.tree_util.tree_leaves(jax.device_get(state.aux["tokenizer"]["params"]))
        differ = ["the parameter trees"] if len(own) != len(trained) else [
            jax.tree_util.keystr(path) for (path, a), b in zip(own, trained, strict=True)
            if np.shape(a) != np.shape(b) or not np.allclose(a, b, atol=1e-6)]
        if differ:
            raise StoryError(f"--tokenizer_workdir {tokenizer_workdir} is not the tokenizer the "
                             f"transformer in {workdir} was trained with (they differ in "
                             f"{differ[0]})")
        self.config, self.stage, self.state, self.tok_vars = config, stage, state, tok_vars
        self.tokenizer_workdir, self.workdir = tokenizer_workdir, workdir
        self.tokenizer_model = tstage.model
        self.num_frames = config.data.num_frames
        self.resolution = config.data.resolution
        k = cond_frames
        if not (isinstance(k, int) and 1 <= k < self.num_frames and k % 2 == 1):
            raise StoryError(f"--cond_frames must be odd (1 + 2j frames) and in [1, "
                             f"{self.num_frames - 1}], got {k}")
        self.cond_frames = k
        self.cond_token_frames = 1 + (k - 1) // 2
        self.num_steps = num_steps or config.sampling.num_steps
        self.guidance_scale = (config.sampling.guidance_scale if guidance_scale is None
                               else guidance_scale)
        self.temperature = config.sampling.temperature if temperature is None else temperature
        self.time_bias = (config.sampling.get("time_bias", 0.0) if time_bias is None
                          else time_bias)
        # A checkpoint written before `sampling.choice_temperature` existed decoded with the
        # token temperature scaling the confidence noise too; it keeps doing so.
        if choice_temperature is None:
            choice_temperature = config.sampling.get("choice_temperature")
        self.choice_temperature = (self.temperature if choice_temperature is None
                                   else choice_temperature)
        if (self.num_steps < 1 or self.guidance_scale < 0 or self.temperature < 0
                or self.time_bias < 0 or self.choice_temperature < 0):
            raise StoryError("--num_steps must be >= 1, --guidance_scale, --temperature, "
                             "--choice_temperature and --time_bias >= 0")
        # A checkpoint written before `sampling.refine_sweeps` existed decoded without it.
        self.refine_sweeps = (config.sampling.get("refine_sweeps", 0) if refine_sweeps is None
                              else refine_sweeps)
        if self.refine_sweeps < 0:
            raise StoryError(f"--refine_sweeps must be >= 0, got {self.refine_sweeps}")
        if batch_size < 1:
            raise StoryError("--batch_size must be >= 1")
        self.batch_size = batch_size
        self.grid = tuple(config.tokens.grid)
        self.tokenizer_step = ckpt_lib.Checkpointer(tokenizer_workdir, read_only=True).steps()[-1]
        self.transformer_step = int(jax.device_get(state.step))
        model, steps, sweeps = tstage.model, self.num_steps, self.refine_sweeps

        @jax.jit
        def encode(tv: Any, frames: jax.Array) -> jax.Array:
            return model.apply(tv, frames_to_float(frames), method="tokenize")

        @jax.jit
        def generate(st: Any, text_ids: jax.Array, text_mask: jax.Array, known_ids: jax.Array,
                     known: jax.Array, keys: jax.Array, scale: jax.Array, temp: jax.Array,
                     time_bias: jax.Array, choice_temp: jax.Array) -> jax.Array:
            batch = {"text_ids": text_ids, "text_mask": text_mask}
            return stage.sample_ids(st, batch, known_ids, known, keys, steps, scale, temp,
                                    time_bias, choice_temp, sweeps)

        @jax.jit
        def decode(tv: Any, ids: jax.Array) -> jax.Array:
            return float_to_frames(model.apply(tv, ids, method="decode_ids"))

        self._encode, self._generate, self._decode = encode, generate, decode

    # -- inputs ---------------------------------------------------------------------------
    def load_image(self, path: str) -> np.ndarray:
        """uint8 [R, R, 3]: centre-cropped and resized to the model's resolution."""
        from phenaki_jax.data import video

        if not os.path.isfile(path):
            raise StoryError(f"image not found: {path}")
        return video.center_crop_resize(video.read_image(path), self.resolution)

    def _text(self, prompts: list[str], story_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        length = self.config.text.max_length
        ids, mask, truncated = self.stage.text_tokenizer.encode_batch(prompts, length)
        for i in truncated:
            logging.warning("story %s: prompt %r is longer than the text length %d; it was "
                            "truncated", story_ids[i], prompts[i][:60], length)
        return ids, mask

    # -- generation -----------------------------------------------------------------------
    def generate(self, stories: Sequence[Story],
                 choose_prompt: Callable[[Story, int, np.ndarray], str] | None = None
                 ) -> list[Result]:
        """Generates every story, `batch_size` at a time (stories of any lengths batch).

        `choose_prompt(story, k, frames)`, if given, is asked for prompt k >= 1 of a story
        once its frames so far (uint8 [T, R, R, 3]) exist, as a storyteller who watches the
        video would; it gets the story with its planned prompts and returns the one to use.
        """
        images = {s.id: self.load_image(s.image) for s in stories if s.image}
        results = []
        for start in range(0, len(stories), self.batch_size):
            batch = [dataclasses.replace(s, prompts=list(s.prompts))
                     for s in stories[start:start + self.batch_size]]
            results.extend(self._generate_batch(batch, images, choose_prompt))
        return results

    def _generate_batch(self, stories: list[Story], images: dict[str, np.ndarray],
                        choose_prompt: Callable[[Story, int, np.ndarray], str] | None
                        ) -> list[Result]:
        import jax

        b, (t, h, w) = self.batch_size, self.grid
        r, k, kt = self.resolution, self.cond_frames, self.cond_token_frames
        n = len(stories)
        videos: list[np.ndarray | None] = [None] * n
        segments: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        timing: list[list[float]] = [[] for _ in range(n)]
        rounds = max(len(s.prompts) for s in stories)
        scale = np.float32(self.guidance_scale)
        temp = np.float32(self.temperature)
        time_bias = np.float32(self.time_bias)
        choice_temp = np.float32(self.choice_temperature)
        for rnd in range(rounds):
            t0 = time.time()
            active = [i for i in range(n) if rnd < len(stories[i].prompts)]
            # The clip each story continues from: its last K frames, or its image repeated
            # (the tokenizer is causal, so token frame 0 of that clip is the image's alone).
            context = np.zeros((b, k, r, r, 3), np.uint8)
            known = np.zeros((b, t, h, w), bool)
            for i in active:
                if rnd > 0:
                    context[i] = videos[i][-k:]
                    known[i, :kt] = True
                elif stories[i].id in images:
                    context[i] = images[stories[i].id][None]
                    known[i, :1] = True
            known_ids = np.zeros((b, t, h, w), np.int32)
            if known.any():
                enc = np.asarray(jax.device_get(self._encode(self.tok_vars, context)))
                known_ids[:, :kt] = enc
            prompts = [""] * b
            for i in active:
                if rnd > 0 and choose_prompt is not None:
                    stories[i].prompts[rnd] = choose_prompt(stories[i], rnd, videos[i])
                prompts[i] = stories[i].prompts[rnd]
            text_ids, text_mask = self._text(prompts, [s.id for s in stories] + [""] * (b - n))
            seeds = [stories[i].seed if i < n else 0 for i in range(b)]
            keys = jax.numpy.stack([jax.random.fold_in(jax.random.key(sd), rnd)
                                    for sd in seeds])
            ids = self._generate(self.state, text_ids, text_mask, known_ids, known, keys,
                                 scale, temp, time_bias, choice_temp)
            frames = np.asarray(jax.device_get(self._decode(self.tok_vars, ids)))
            dt = time.time() - t0
            for i in active:
                if rnd == 0:
                    videos[i] = frames[i]
                    segments[i].append({"prompt": stories[i].prompts[0], "start_frame": 0,
                                        "end_frame": self.num_frames})
                else:
                    start = videos[i].shape[0]
                    videos[i] = np.concatenate([videos[i], frames[i, k:]])
                    segments[i].append({"prompt": stories[i].prompts[rnd], "start_frame": start,
                                        "end_frame": videos[i].shape[0]})
                timing[i].append(dt)
            logging.info("prompt %d/%d of %d stor%s done in %.2f s", rnd + 1, rounds,
                         len(active), "y" if len(active) == 1 else "ies", dt)
        return [Result(stories[i], videos[i], segments[i], timing[i]) for i in range(n)]

    def settings(self) -> dict[str, Any]:
        return {"cond_frames": self.cond_frames, "guidance_scale": float(self.guidance_scale),
                "num_steps": int(self.num_steps), "temperature": float(self.temperature),
                "choice_temperature": float(self.choice_temperature),
                "refine_sweeps": int(self.refine_sweeps),
                "time_bias": float(self.time_bias),
                "resolution": self.resolution, "tokenizer_step": int(self.tokenizer_step),
                "transformer_step": self.transformer_step}


def write_result(result: Result, video_path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Writes VIDEO (mp4/gif by extension), .npy beside it and the .json manifest."""
    from phenaki_jax.data import video

    stem = os.path.splitext(video_path)[0]
    manifest = {"id": result.story.id, "fps": FPS, "num_frames": int(result.frames.shape[0]),
                "segments": result.segments, "prompts": result.story.prompts,
                "seed": result.story.seed, "image": result.story.image, **settings,
                "seconds_per_prompt": [round(x, 4) for x in result.seconds_per_prompt]}
    video.save_npy(stem + ".npy", result.frames)
    video.write_video(video_path, result.frames, fps=FPS)
    with video.atomic_path(stem + ".json") as tmp, open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
