"""Running a trained C-ViViT: clips -> (reconstruction, token ids)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from phenaki_jax.models.cvivit import CViViT, float_to_frames, frames_to_float
from phenaki_jax.stages.cvivit import CViViTStage


def tokenize_and_reconstruct(stage: CViViTStage, state: Any, clips: np.ndarray,  # noqa: ANN401
                             chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """clips uint8 [B, T, H, W, 3] -> (reconstruction uint8 same shape, ids int32 [B,t,h,w])."""
    variables = {"params": stage.inference_params(state), **state.model_state}
    return run_tokenizer(stage.model, variables, clips, chunk)


def run_tokenizer(model: CViViT, variables: Any, clips: np.ndarray,  # noqa: ANN401
                  chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """`tokenize_and_reconstruct` for a C-ViViT and its inference variables (a tokenizer's
    own, or the one frozen in a transformer's state)."""

    @jax.jit
    def run(v: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:  # noqa: ANN401
        out = model.apply(v, frames_to_float(x))
        return float_to_frames(out["recon"]), out["ids"]

    recons, ids = [], []
    for i in range(0, clips.shape[0], chunk):
        r, t = jax.device_get(run(variables, clips[i:i + chunk]))
        recons.append(np.asarray(r))
        ids.append(np.asarray(t, np.int32))
    return np.concatenate(recons), np.concatenate(ids)
