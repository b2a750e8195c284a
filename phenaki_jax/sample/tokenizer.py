"""Running a trained C-ViViT: clips -> (reconstruction, token ids)."""

from __future__ import annotations

from typing import Any

import numpy as np


def tokenize_and_reconstruct(stage: Any, state: Any, clips: np.ndarray,
                             chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """clips uint8 [B, T, H, W, 3] -> (reconstruction uint8 same shape, ids int32 [B,t,h,w])."""
    import jax

    from phenaki_jax.models.cvivit import float_to_frames, frames_to_float

    variables = {"params": stage.inference_params(state), **state.model_state}

    @jax.jit
    def run(v: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = stage.model.apply(v, frames_to_float(x))
        return float_to_frames(out["recon"]), out["ids"]

    recons, ids = [], []
    for i in range(0, clips.shape[0], chunk):
        r, t = jax.device_get(run(variables, clips[i:i + chunk]))
        recons.append(np.asarray(r))
        ids.append(np.asarray(t, np.int32))
    return np.concatenate(recons), np.concatenate(ids)
