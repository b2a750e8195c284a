"""Tokenizer PSNR per (colour, shape) composition: is a held-out pair hard because it is unseen
in motion, or because of its colour?

    .venv/bin/python benchmarks/tokenizer_compositions.py --workdir=runs/demo/tokenizer \
        [--clips_per_direction=3] [--seed=123]

Renders, for every (colour, shape) pair of the shapes world, `clips_per_direction` clips per
direction (still included) at uniform start positions (the spec's rule: the object stays inside
for all 11 frames), reconstructs them with the newest checkpoint in `--workdir`, and prints one
JSON object: PSNR per pair; means over the held-out pairs, over the seen pairs, over the seen
pairs of the held-out pairs' colours (all of them two- or three-channel colours) and over the
one-channel colours; PSNR per frame for held-out and seen clips; and where the squared error of
each group lies: background pixels, object pixels in channels the colour lights, object pixels
in channels it leaves dark (colour bleed). `unquantized` repeats the means and the held-out
pairs with the decoder given the encoder's output itself instead of its code: what the
encoder and decoder generalize to, apart from what the codebook can represent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a program: the tests import this file next to our CLIs' flags."""
    flags.DEFINE_string("workdir", None, "A tokenizer training workdir.", required=True)
    flags.DEFINE_integer("clips_per_direction", 3, "Clips per (pair, direction).",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 123, "Seed of the start positions.")
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the newest).")
    flags.DEFINE_bool("raw_params", False, "Judge the trained parameters even when the run "
                      "keeps an EMA of them (which inference uses by default).")


def pair_clips(pairs: Sequence[tuple[str, str]], per_direction: int, resolution: int,
               rng: np.random.Generator
               ) -> tuple[np.ndarray, list[tuple[str, str]], list[str]]:
    """uint8 [N, 11, R, R, 3] clips of constant colour and velocity, each clip's pair, and
    each clip's caption."""
    from phenaki_jax.data import shapes_world as sw

    clips, owners, captions = [], [], []
    for color, shape in pairs:
        for direction in sw.DIRECTIONS:
            for _ in range(per_direction):
                clips.append(sw.moving_clip(color, shape, direction, rng, resolution)[0])
                owners.append((color, shape))
                captions.append(sw.caption_video(color, shape, direction))
    return np.stack(clips), owners, captions


def psnr_db(mse: float | np.ndarray) -> float | np.ndarray:
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def error_shares(clips: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """Shares of the summed squared error: background, lit channels of the object, dark
    channels of the object."""
    err = np.square(recon.astype(np.float64) - clips.astype(np.float64))
    lit = clips > 0
    foreground = np.broadcast_to(lit.any(-1, keepdims=True), err.shape)
    total = max(err.sum(), 1e-12)
    return {"background": float(err[~foreground].sum() / total),
            "object_lit_channels": float(err[lit].sum() / total),
            "object_dark_channels": float(err[foreground & ~lit].sum() / total)}


def reconstruct_unquantized(stage: Any, state: Any, clips: np.ndarray, chunk: int = 16
                            ) -> np.ndarray:
    """uint8 clips -> uint8 reconstructions decoded from the encoder's (normalised) output
    rather than from its nearest code."""
    import jax

    from phenaki_jax.models.cvivit import float_to_frames, frames_to_float

    variables = {"params": stage.inference_params(state), **state.model_state}
    model = stage.model

    @jax.jit
    def run(v: Any, x: Any) -> Any:
        z = model.apply(v, frames_to_float(x), method=model.encode)["z"]
        return float_to_frames(model.apply(v, z, method=model.decode_codes))

    return np.concatenate([np.asarray(jax.device_get(run(variables, clips[i:i + chunk])))
                           for i in range(0, clips.shape[0], chunk)])


def main(argv: Sequence[str]) -> None:
    del argv
    from phenaki_jax.data import shapes_world as sw
    from phenaki_jax.evaluation import judge
    from phenaki_jax.inference.tokenizer import tokenize_and_reconstruct
    from phenaki_jax.stages import registry

    config, stage, state = registry.restore_for_inference(FLAGS.workdir, expected_stage="cvivit",
                                                          step=FLAGS.step)
    if FLAGS.raw_params:
        state = state.replace(ema_params=state.params)
    resolution = config.data.resolution
    rng = np.random.default_rng(FLAGS.seed)
    held = sorted(sw.HELD_OUT)
    seen = list(sw.VIDEO_PAIRS)
    clips, owners, captions = pair_clips(held + seen, FLAGS.clips_per_direction, resolution,
                                         rng)
    recon, _ = tokenize_and_reconstruct(stage, state, clips)
    mse = np.square(recon.astype(np.float64) - clips.astype(np.float64)).mean(axis=(2, 3, 4))
    unquantized = reconstruct_unquantized(stage, state, clips)
    mse_unq = np.square(unquantized.astype(np.float64) - clips.astype(np.float64)).mean(
        axis=(2, 3, 4))

    def mean_over(pairs: Sequence[tuple[str, str]], err: np.ndarray = mse) -> float:
        chosen = set(pairs)
        return float(psnr_db(err[[o in chosen for o in owners]].mean()))

    held_colors = {c for c, _ in held}
    is_held = np.array([o in sw.HELD_OUT for o in owners])

    def judge_pass(frames: np.ndarray, chosen: np.ndarray) -> float:
        return float(np.mean([judge.judge_segment(f, cap, resolution)["adheres"]
                              for f, cap, keep in zip(frames, captions, chosen, strict=True)
                              if keep]))
    report = {
        "workdir": FLAGS.workdir, "step": int(state.step), "resolution": resolution,
        "clips": len(owners),
        "held_out_mean_db": mean_over(held),
        "seen_mean_db": mean_over(seen),
        "seen_in_held_out_colours_mean_db": mean_over([p for p in seen if p[0] in held_colors]),
        "seen_one_channel_colours_mean_db": mean_over(
            [p for p in seen if sum(v > 0 for v in sw.PALETTE[p[0]]) == 1]),
        "held_out_db": {f"{c} {s}": mean_over([(c, s)]) for c, s in held},
        "seen_db": {f"{c} {s}": mean_over([(c, s)]) for c, s in seen},
        "per_frame_db": {"held_out": psnr_db(mse[is_held].mean(0)).round(2).tolist(),
                         "seen": psnr_db(mse[~is_held].mean(0)).round(2).tolist()},
        # What the judge of phenaki-eval says of the reconstructions (and of the rendered
        # clips themselves): a transformer whose tokens decode through this tokenizer adheres
        # at most about this often.
        "judge_pass": {"held_out": judge_pass(recon, is_held),
                       "seen": judge_pass(recon, ~is_held),
                       "held_out_rendered": judge_pass(clips, is_held)},
        "error_shares": {"held_out": error_shares(clips[is_held], recon[is_held]),
                         "seen": error_shares(clips[~is_held], recon[~is_held])},
        "unquantized": {
            "held_out_mean_db": mean_over(held, mse_unq),
            "seen_mean_db": mean_over(seen, mse_unq),
            "seen_in_held_out_colours_mean_db": mean_over(
                [p for p in seen if p[0] in held_colors], mse_unq),
            "held_out_db": {f"{c} {s}": mean_over([(c, s)], mse_unq) for c, s in held},
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.cli import common as cli

    define_flags()
    cli.run("tokenizer_compositions", main, expected=(CheckpointError,))
