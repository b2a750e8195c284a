"""Stopping a run cleanly when the machine is about to be taken away (SIGTERM)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
    """SIGTERM makes the loop finish its step, save, and return.

    One process: a Python SIGTERM handler sets a flag. Several processes (a TPU pod, or
    `--num_processes`): JAX's preemption service, which `jax.distributed.initialize` starts,
    takes the signal on whichever process gets it and agrees with all of them on one step to
    stop at; a flag per process could stop them at different steps, and a checkpoint saved by
    some processes only would never complete.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._multiprocess = jax.process_count() > 1
        if self._multiprocess and not jax.distributed.is_initialized():
            # E.g. a TPU slice started without --multihost: its hosts run, but nothing can
            # agree on a step, so SIGTERM keeps its default action (the periodic checkpoints
            # stay; a half-written one is never listed).
            logging.warning("%d processes without jax.distributed: SIGTERM will end this run "
                            "without a checkpoint; start it with --multihost or "
                            "--coordinator_address", jax.process_count())

    def __enter__(self) -> Preemption:
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ANN401
        logging.warning("SIGTERM received: finishing the current step, then checkpointing")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if not self._multiprocess:
            return self.requested
        reached = multihost_utils.reached_preemption_sync_point(step)
        if reached:
            logging.warning("preemption notice: every process stops after step %d", step)
        return bool(reached)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
