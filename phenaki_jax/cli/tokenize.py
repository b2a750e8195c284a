"""phenaki-tokenize: a trained C-ViViT's tokens and reconstruction of a clip.

`phenaki-tokenize --workdir=DIR --input=IN --output=OUT.npy [--tokens=TOKENS.npy]`
IN is a .npy of uint8 [B, T, H, W, 3] (T = 1 + 2k, H = W = the model's resolution), or a video
or image file (decoded as RGB, resampled to 8 fps, centre-cropped and resized to the model's
resolution, cut to the longest 1 + 2k frames the model takes). OUT is the reconstruction with
the input's shape; TOKENS is int32 [B, 1 + (T - 1) / 2, H / p, W / p].
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_WORKDIR = flags.DEFINE_string("workdir", None, "Tokenizer workdir (orbax checkpoints).")
_INPUT = flags.DEFINE_string("input", None, ".npy uint8 [B, T, H, W, 3], or a video/image file.")
_OUTPUT = flags.DEFINE_string("output", None, "Reconstruction .npy (same shape as the input).")
_TOKENS = flags.DEFINE_string("tokens", None, "Optional token ids .npy, int32 [B, t, h, w].")


def load_clips(path: str, resolution: int, max_frames: int) -> tuple[np.ndarray, bool]:
    """Reads --input as uint8 [B, T, R, R, 3]; raises UsageError/MediaError naming the file.

    The flag says the input was one clip [T, H, W, 3] (the outputs then drop the batch axis).
    """
    from phenaki_jax import storage
    from phenaki_jax.data import media
    from phenaki_jax.data.features import FPS

    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if not storage.isfile(path):
            raise UsageError(f"--input file not found: {path}")
        try:
            with storage.open_file(path) as f:
                arr = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UsageError(f"--input {path} is not a readable .npy file: {e}") from e
        if arr.dtype != np.uint8:
            raise UsageError(f"--input {path} must be uint8, got {arr.dtype}")
        single = arr.ndim == 4
        if single:
            arr = arr[None]
        if arr.ndim != 5 or arr.shape[-1] != 3:
            raise UsageError(f"--input {path} must be [B, T, H, W, 3], got {arr.shape}")
        _, t, h, w, _ = arr.shape
        if (h, w) != (resolution, resolution):
            raise UsageError(f"--input {path} has frames of {h}x{w}; the tokenizer was "
                                 f"trained at {resolution}x{resolution}")
        if (t - 1) % 2 or t > max_frames:
            raise UsageError(f"--input {path} has {t} frames; the tokenizer takes 1 + 2k "
                                 f"frames, at most {max_frames}")
        return arr, single
    if ext in media.IMAGE_EXTENSIONS:
        return media.center_crop_resize(media.read_image(path), resolution)[None, None], False
    if ext in media.VIDEO_EXTENSIONS:
        frames = media.read_video(path, fps=FPS, max_frames=max_frames)
        t = frames.shape[0] - (frames.shape[0] - 1) % 2
        return media.center_crop_resize(frames[:t], resolution)[None], False
    raise UsageError(f"--input {path}: unknown file type '{ext}' (.npy, a video or an image)")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, flag in (("--workdir", _WORKDIR), ("--input", _INPUT), ("--output", _OUTPUT)):
        if not flag.value:
            raise UsageError(f"{name} is required")
    if not _OUTPUT.value.endswith(".npy"):
        raise UsageError(f"--output must be a .npy path, got {_OUTPUT.value}")
    if _TOKENS.value and not _TOKENS.value.endswith(".npy"):
        raise UsageError(f"--tokens must be a .npy path, got {_TOKENS.value}")
    from phenaki_jax.data import media
    from phenaki_jax.inference.tokenizer import tokenize_and_reconstruct
    from phenaki_jax.stages import registry

    config, stage, state = registry.restore_for_inference(_WORKDIR.value, expected_stage="cvivit")
    max_frames = config.data.num_frames
    clips, squeeze = load_clips(_INPUT.value, config.data.resolution, max_frames)
    recon, ids = tokenize_and_reconstruct(stage, state, clips)
    media.save_npy(_OUTPUT.value, recon[0] if squeeze else recon)
    if _TOKENS.value:
        media.save_npy(_TOKENS.value, ids[0] if squeeze else ids)
    sys.stderr.write(f"phenaki-tokenize: {clips.shape} -> tokens {ids.shape}; wrote "
                     f"{_OUTPUT.value}\n")


def run() -> None:
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.data.media import MediaError

    run_command("phenaki-tokenize", main, (MediaError, CheckpointError))


if __name__ == "__main__":
    run()
