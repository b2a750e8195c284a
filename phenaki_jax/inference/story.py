"""The story decoder behind phenaki-story: a sequence of prompts becomes one video, from the
transformer's checkpoint alone (the tokenizer it learned on is frozen inside it).

`phenaki-story --workdir=DIR2 --prompts_file=P.txt --output=OUT.mp4`
`phenaki-story --workdir=DIR2 --stories=S.jsonl --output_dir=OUTDIR`

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
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from phenaki_jax import storage
from phenaki_jax.config import ConfigError, validation
from phenaki_jax.data import media
from phenaki_jax.data.features import FPS
from phenaki_jax.decoding import SamplingSettings
from phenaki_jax.inference.story_io import Result, Story, StoryError
from phenaki_jax.models.cvivit import float_to_frames, frames_to_float
from phenaki_jax.stages import registry, restore


class CompileCounter:
    """Counts XLA compilations in this process (JAX's backend-compile monitoring event)."""

    _count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        def listener(event: str, duration: float, **kwargs: Any) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                cls._count += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        cls._installed = True

    @classmethod
    def count(cls) -> int:
        return cls._count


class StoryDecoder:
    """The transformer (and the tokenizer frozen inside it) restored onto this machine, with
    compiled encode, generate and decode steps."""

    def __init__(self, workdir: str, cond_frames: int = 5, batch_size: int = 8,
                 tokenizer_workdir: str | None = None, **sampling: Any) -> None:
        """`sampling`: overrides of `config.sampling` (`SamplingSettings` fields; None keeps
        the checkpoint's value). `tokenizer_workdir`, when given, must hold the tokenizer the
        transformer was trained with."""
        CompileCounter.install()
        config, stage, state = registry.restore_for_inference(workdir, expected_stage="maskgit")
        tok_vars = state.aux["tokenizer"]
        meta = restore.read_meta(workdir)
        tokenizer_step = meta.get("tokenizer", {}).get("step")
        if tokenizer_workdir is not None:
            tokenizer_step = _check_same_tokenizer(tokenizer_workdir, workdir, config, tok_vars)
        elif tokenizer_step is None and config.get("tokenizer_workdir"):
            tokenizer_step = restore.read_config(config.tokenizer_workdir)[0]
        self.config, self.stage, self.state, self.tok_vars = config, stage, state, tok_vars
        self.workdir = workdir
        self.tokenizer_model = stage.tokenizer_model
        self.num_frames = config.data.num_frames
        self.resolution = config.data.resolution
        k = cond_frames
        if not (isinstance(k, int) and 1 <= k < self.num_frames and k % 2 == 1):
            raise StoryError(f"--cond_frames must be odd (1 + 2j frames) and in [1, "
                             f"{self.num_frames - 1}], got {k}")
        self.cond_frames = k
        self.cond_token_frames = 1 + (k - 1) // 2
        try:
            self.sampling = SamplingSettings.from_config(config.sampling, **sampling)
        except ConfigError as e:
            raise StoryError(str(e)) from e
        if batch_size < 1:
            raise StoryError("--batch_size must be >= 1")
        self.batch_size = batch_size
        self.grid = tuple(config.tokens.grid)
        self.tokenizer_step = -1 if tokenizer_step is None else int(tokenizer_step)
        self.transformer_step = int(jax.device_get(state.step))
        model = stage.tokenizer_model

        @jax.jit
        def encode(tv: Any, frames: jax.Array) -> jax.Array:
            return model.apply(tv, frames_to_float(frames), method="tokenize")

        @jax.jit
        def generate(st: Any, text_ids: jax.Array, text_mask: jax.Array, known_ids: jax.Array,
                     known: jax.Array, keys: jax.Array, settings: SamplingSettings
                     ) -> jax.Array:
            batch = {"text_ids": text_ids, "text_mask": text_mask}
            return stage.sample_ids(st, batch, known_ids, known, keys, settings)

        @jax.jit
        def decode(tv: Any, ids: jax.Array) -> jax.Array:
            return float_to_frames(model.apply(tv, ids, method="decode_ids"))

        self._encode, self._generate, self._decode = encode, generate, decode

    # -- inputs ---------------------------------------------------------------------------
    def load_image(self, path: str) -> np.ndarray:
        """uint8 [R, R, 3]: centre-cropped and resized to the model's resolution."""
        if not storage.isfile(path):
            raise StoryError(f"image not found: {path}")
        return media.center_crop_resize(media.read_image(path), self.resolution)

    def load_video(self, path: str) -> np.ndarray:
        """uint8 [K, R, R, 3]: the last K (`cond_frames`) frames of a video, decoded at 8 fps,
        centre-cropped and resized as training data is."""
        if not storage.isfile(path):
            raise StoryError(f"video not found: {path}")
        frames = media.read_video(path, fps=FPS)
        if frames.shape[0] < self.cond_frames:
            raise StoryError(f"video {path} has {frames.shape[0]} frames at {FPS} fps; "
                             f"--cond_frames={self.cond_frames} needs at least that many")
        return media.center_crop_resize(frames[-self.cond_frames:], self.resolution)

    def _text(self, prompts: list[str], story_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        length = self.config.text.max_length
        ids, mask, truncated = self.stage.text.tokenize(prompts)
        for i in truncated:
            logging.warning("story %s: prompt %r is longer than the text length %d; it was "
                            "truncated", story_ids[i], prompts[i][:60], length)
        return ids, mask

    # -- generation -----------------------------------------------------------------------
    def generate(self, stories: Sequence[Story],
                 choose_prompt: Callable[[Story, int, np.ndarray], str] | None = None,
                 on_segment: Callable[[int, int], None] | None = None) -> list[Result]:
        """Generates every story, `batch_size` at a time (stories of any lengths batch).

        `choose_prompt(story, k, frames)`, if given, is asked for prompt k >= 1 of a story
        once its frames so far (uint8 [T, R, R, 3]) exist, as a storyteller who watches the
        video would; it gets the story with its planned prompts and returns the one to use.
        A story's kept segments are not generated again: it goes on from their last frames
        exactly as a story generated whole would. `on_segment(done, total)`, if given, hears
        of every finished round of segments (as the terminal's progress bar does).
        """
        fresh = [s for s in stories if s.kept is None]
        contexts = {s.id: self.load_image(s.image)[None] for s in fresh if s.image}
        contexts.update({s.id: self.load_video(s.video) for s in fresh if s.video})
        todo = sum(len(s.prompts) - (len(s.kept.segments) if s.kept else 0) for s in stories)
        results, done = [], 0
        with tqdm.tqdm(total=todo, unit="segment", desc="story", leave=False,
                       disable=not sys.stderr.isatty()) as progress:

            def advance(segments: int) -> None:
                nonlocal done
                done += segments
                progress.update(segments)
                if on_segment is not None:
                    on_segment(done, todo)

            for start in range(0, len(stories), self.batch_size):
                batch = [dataclasses.replace(s, prompts=list(s.prompts))
                         for s in stories[start:start + self.batch_size]]
                results.extend(self._generate_batch(batch, contexts, choose_prompt, advance))
        return results

    def _generate_batch(self, stories: list[Story], contexts: dict[str, np.ndarray],
                        choose_prompt: Callable[[Story, int, np.ndarray], str] | None,
                        advance: Callable[[int], None]) -> list[Result]:
        b, (t, h, w) = self.batch_size, self.grid
        r, k, kt = self.resolution, self.cond_frames, self.cond_token_frames
        n = len(stories)
        kept = [s.kept for s in stories]
        first = [0 if c is None else len(c.segments) for c in kept]
        videos: list[np.ndarray | None] = [None if c is None else c.frames for c in kept]
        segments = [[] if c is None else list(c.segments) for c in kept]
        ids_of = [[] if c is None else list(c.ids) for c in kept]
        seeds_of = [[] if c is None else list(c.seeds) for c in kept]
        timing = [[] if c is None else list(c.seconds_per_prompt) for c in kept]
        rounds = max(len(s.prompts) for s in stories)
        for rnd in range(min(first), rounds):
            active = [i for i in range(n) if first[i] <= rnd < len(stories[i].prompts)]
            if not active:
                continue
            t0 = time.time()
            # The clip each story continues from: its last K frames (or a video's), or its
            # image repeated (the tokenizer is causal, so token frame 0 is the image's alone).
            context = np.zeros((b, k, r, r, 3), np.uint8)
            known = np.zeros((b, t, h, w), bool)
            for i in active:
                given = contexts.get(stories[i].id) if rnd == 0 else None
                if videos[i] is not None:
                    context[i] = videos[i][-k:]
                    known[i, :kt] = True
                elif given is not None:
                    context[i] = given
                    known[i, :1 if given.shape[0] == 1 else kt] = True
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
            keys = jnp.stack([jax.random.fold_in(jax.random.key(sd), rnd) for sd in seeds])
            ids = self._generate(self.state, text_ids, text_mask, known_ids, known, keys,
                                 self.sampling)
            frames = np.asarray(jax.device_get(self._decode(self.tok_vars, ids)))
            ids = np.asarray(jax.device_get(ids))
            dt = time.time() - t0
            for i in active:
                if videos[i] is None:
                    # A continued video's re-encoded context is frames 0 .. K-1.
                    videos[i] = frames[i]
                    start = k if stories[i].video else 0
                else:
                    start = videos[i].shape[0]
                    videos[i] = np.concatenate([videos[i], frames[i, k:]])
                segments[i].append({"prompt": stories[i].prompts[rnd], "start_frame": start,
                                    "end_frame": videos[i].shape[0]})
                ids_of[i].append(ids[i])
                seeds_of[i].append(stories[i].seed)
                timing[i].append(dt)
            advance(len(active))
            logging.info("prompt %d/%d of %d stor%s done in %.2f s", rnd + 1, rounds,
                         len(active), "y" if len(active) == 1 else "ies", dt)
        return [Result(stories[i], videos[i], segments[i], timing[i], ids_of[i], seeds_of[i])
                for i in range(n)]

    def settings(self) -> dict[str, Any]:
        """What the output's manifest records besides its segments; `model` fingerprints the
        transformer (its config and step) and its tokenizer's step."""
        model = hashlib.sha256(json.dumps(
            [self.config.to_dict(), self.transformer_step, self.tokenizer_step],
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"cond_frames": self.cond_frames, **self.sampling.as_dict(),
                "resolution": self.resolution, "tokenizer_step": self.tokenizer_step,
                "transformer_step": self.transformer_step, "model": model}


def _check_same_tokenizer(tokenizer_workdir: str, workdir: str,
                          config: ml_collections.ConfigDict, tok_vars: Any) -> int:
    """The step of the tokenizer in `tokenizer_workdir`, which must be exactly the one frozen
    in the transformer of `workdir` (two tokenizers may share a codebook and differ
    elsewhere, so every parameter is compared)."""
    if not storage.isdir(tokenizer_workdir):
        raise StoryError(f"--tokenizer_workdir {tokenizer_workdir} does not exist")
    tconfig, tstage, tstate = registry.restore_for_inference(
        tokenizer_workdir, expected_stage="cvivit", name="--tokenizer_workdir")
    try:
        validation.check_tokenizer(config, tconfig, f"--tokenizer_workdir {tokenizer_workdir}")
    except ConfigError as e:
        raise StoryError(f"--workdir {workdir} does not fit --tokenizer_workdir: {e}") from e
    own = jax.tree_util.tree_leaves_with_path(jax.device_get(tstage.inference_params(tstate)))
    trained = jax.tree_util.tree_leaves(jax.device_get(tok_vars["params"]))
    differ = ["the parameter trees"] if len(own) != len(trained) else [
        jax.tree_util.keystr(path) for (path, a), b in zip(own, trained, strict=True)
        if np.shape(a) != np.shape(b) or not np.allclose(a, b, atol=1e-6)]
    if differ:
        raise StoryError(f"--tokenizer_workdir {tokenizer_workdir} is not the tokenizer the "
                         f"transformer in {workdir} was trained with (they differ in "
                         f"{differ[0]})")
    return int(jax.device_get(tstate.step))
