"""`make demo`: train the tiny tokenizer on the shapes world and show what it does.

Trains `configs/cvivit.py:variant=tiny` with its defaults into WORKDIR/tokenizer (resuming
if it is already there), reconstructs held-out clips (test split, plus the four (colour,
shape) pairs that no training video shows), and writes under WORKDIR:
`reconstructions.mp4` / `.gif` (original | reconstruction, side by side, 8 fps),
`reconstructions.png` (a contact sheet) and `report.json` (PSNR, codebook use, causality).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from phenaki_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.")
_CLIPS = flags.DEFINE_integer("clips", 32, "Held-out test clips to reconstruct.")


def held_out_clips(resolution: int, n: int) -> tuple[np.ndarray, list[str]]:
    """Test-split videos, then one moving clip of each held-out (colour, shape) pair."""
    from phenaki_jax.data import shapes_world as sw

    clips, captions = [], []
    for i in range(n):
        ex = sw.video_example("test", i, resolution)
        clips.append(ex.frames)
        captions.append(ex.caption)
    s = sw.object_size(resolution)
    for j, (color, shape) in enumerate(sorted(sw.HELD_OUT)):
        direction = sw.DIRECTIONS[j % 4]
        dx, dy = sw.velocity(direction, resolution)
        x0 = resolution // 2 - s // 2 - 5 * dx
        y0 = resolution // 2 - s // 2 - 5 * dy
        positions = [(x0 + t * dx, y0 + t * dy) for t in range(sw.NUM_FRAMES)]
        clips.append(sw.render_clip(shape, [color] * sw.NUM_FRAMES, positions, resolution))
        captions.append(sw.caption_video(color, shape, direction) + " (held out)")
    return np.stack(clips), captions


def contact_sheet(originals: np.ndarray, recons: np.ndarray, path: str, rows: int = 8,
                  scale: int = 3) -> None:
    """PNG grid: each clip's frames, original row above reconstruction row."""
    from PIL import Image

    from phenaki_jax.data.video import atomic_path

    n = min(rows, originals.shape[0])
    pairs = np.concatenate([originals[:n], recons[:n]], axis=2)  # [n, T, 2H, W, 3]
    pairs = np.pad(pairs, ((0, 0), (0, 0), (0, 2), (0, 2), (0, 0)), constant_values=40)
    n, t, h, w, _ = pairs.shape
    grid = pairs.transpose(0, 2, 1, 3, 4).reshape(n * h, t * w, 3)
    image = Image.fromarray(grid).resize((t * w * scale, n * h * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from absl import logging

    from phenaki_jax.data import video
    from phenaki_jax.sample.tokenizer import tokenize_and_reconstruct
    from phenaki_jax.train import cvivit_stage, trainer

    logging.set_verbosity(logging.INFO)
    root = os.path.abspath(_WORKDIR.value)
    tok_dir = os.path.join(root, "tokenizer")
    from phenaki_jax import config_lib

    config = config_lib.load_config_file(config_lib.repo_config_path("cvivit"), "variant=tiny")
    t0 = time.time()
    summary = trainer.train_and_evaluate(config, tok_dir)
    train_s = time.time() - t0

    config, stage, state = trainer.restore_for_inference(tok_dir, expected_stage="cvivit")
    clips, captions = held_out_clips(config.data.resolution, _CLIPS.value)
    recon, ids = tokenize_and_reconstruct(stage, state, clips)
    import jax.numpy as jnp

    psnr = np.asarray(cvivit_stage.psnr_per_clip(jnp.asarray(recon), jnp.asarray(clips)))
    n_held = len(captions) - _CLIPS.value
    prefix_recon, prefix_ids = tokenize_and_reconstruct(stage, state, clips[:, :5])
    report = {
        "tokenizer_workdir": tok_dir,
        "train_wall_s": round(train_s, 1),
        "train_steps": int(summary["step"]),
        "psnr_test_mean_db": float(psnr[:_CLIPS.value].mean()),
        "psnr_held_out_compositions_db": dict(zip(captions[-n_held:],
                                                  map(float, psnr[-n_held:]), strict=True)),
        "codebook_used_on_these_clips": float(len(np.unique(ids)) / config.model.codebook_size),
        "causal_prefix_tokens_equal": bool((prefix_ids == ids[:, :3]).all()),
        "tokens_shape": list(ids.shape[1:]),
    }
    side = np.concatenate([clips, recon], axis=3)  # [N, T, H, 2W, 3]
    strip = np.concatenate(list(side[:8]), axis=1)  # 8 clips stacked vertically
    up = np.repeat(np.repeat(strip, 4, axis=1), 4, axis=2)
    video.write_video(os.path.join(root, "reconstructions.mp4"), up, fps=8)
    video.write_video(os.path.join(root, "reconstructions.gif"), up, fps=8)
    order = list(range(_CLIPS.value, len(captions))) + list(range(4))
    contact_sheet(clips[order], recon[order], os.path.join(root, "reconstructions.png"))
    with video.atomic_path(os.path.join(root, "report.json")) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    sys.stdout.write(
        f"\nphenaki demo: tiny tokenizer trained in {report['train_wall_s']} s "
        f"({report['train_steps']} steps)\n"
        f"  held-out test clips: PSNR {report['psnr_test_mean_db']:.2f} dB; held-out "
        f"compositions: {min(report['psnr_held_out_compositions_db'].values()):.2f} dB (worst)\n"
        f"  videos:  {os.path.join(root, 'reconstructions.mp4')} (and .gif)\n"
        f"  sheet:   {os.path.join(root, 'reconstructions.png')}\n"
        f"  report:  {os.path.join(root, 'report.json')}\n")


def run() -> None:
    from phenaki_jax.train.checkpoint import CheckpointError
    from phenaki_jax.train.trainer import TrainingError

    cli.run("phenaki-demo", main, (TrainingError, CheckpointError))


if __name__ == "__main__":
    run()
