"""The interface through which the training loop, the benchmark and inference drive a stage.

A stage owns one model and everything its training needs: the initial state, the jittable
train and eval steps, the host-side batch preparation and the logical axes of its batch. The
loop knows nothing else about it (as t5x's `BaseModel`).
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import ml_collections
import numpy as np

from phenaki_jax.stages.state import TrainState

Array = jax.Array
Batch = dict[str, Array]


class Stage(abc.ABC):
    """One trainable stage of the pipeline (the C-ViViT tokenizer, the masked transformer)."""

    name: str
    config: ml_collections.ConfigDict
    # Logical axis names of each array of the batch the steps take (see sharding.py).
    batch_axes: dict[str, tuple[str, ...]]
    # The token grid [t, h, w] of one clip.
    tokens_shape: tuple[int, int, int]

    @abc.abstractmethod
    def init(self, rng: Array) -> TrainState:
        """The initial state with logically boxed parameters (unbox before use)."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Batch]:
        """One optimisation step: (new state, scalar metrics with at least `loss`)."""

    @abc.abstractmethod
    def eval_step(self, state: TrainState, batch: Batch) -> Batch:
        """Per-batch sums that `finish_eval` turns into metrics (so batches average exactly)."""

    @abc.abstractmethod
    def finish_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """Evaluation metrics from the sums of every eval batch."""

    @abc.abstractmethod
    def summary_images(self, state: TrainState, batch: Batch) -> Array:
        """uint8 [N, H, W, 3] images for TensorBoard."""

    @abc.abstractmethod
    def example_batch(self, batch_size: int | None = None) -> Batch:
        """A batch of zeros with the shapes and dtypes the steps take."""

    def host_batch(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The input pipeline's batch (frames, is_image, text, context_frames) as the steps
        take it, on the host; by default the arrays named in `batch_axes`."""
        return {k: raw[k] for k in self.batch_axes}

    def bench_batch(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random batch for phenaki-bench: uint8 arrays uniform, the rest zeros."""
        return {k: rng.integers(0, 256, v.shape).astype(v.dtype) if v.dtype == np.uint8
                else np.zeros(v.shape, v.dtype) for k, v in self.example_batch().items()}

    def prepare_new_state(self, state: TrainState, mesh: jax.sharding.Mesh,
                          state_shardings: Any) -> TrainState:  # noqa: ANN401
        """A freshly initialised state, completed before the first step (frozen parts)."""
        return state

    def checkpoint_meta(self) -> dict[str, Any]:
        """JSON-able facts stored with every checkpoint beside the config."""
        return {}

    def detached_aux(self) -> tuple[str, ...]:
        """Keys of `state.aux` that checkpoints leave out: a frozen pretrained model, which
        `attach` reloads from its own files (its origin and fingerprint are in the meta)."""
        return ()

    def savable(self, state: Any) -> Any:  # noqa: ANN401 - a TrainState or its abstract
        """`state` without the detached parts: what a checkpoint stores and restores."""
        keys = self.detached_aux()
        if not keys:
            return state
        return state.replace(aux={k: v for k, v in state.aux.items() if k not in keys})

    def attach(self, state: TrainState, meta: dict[str, Any],
               state_shardings: Any) -> TrainState:  # noqa: ANN401
        """A restored state completed with its detached parts, checked against `meta`."""
        return state

    def inference_params(self, state: TrainState) -> Any:  # noqa: ANN401
        """The parameters inference uses: the EMA when the config keeps one."""
        return state.ema_params if self.config.ema_decay > 0 else state.params
