"""Where a run's metrics go: metrics.jsonl and TensorBoard, written by process 0 only.

Both live in the workdir. On GCS, where an object cannot be appended to, they are written to a
local mirror and uploaded whole at most every `sync_every_s` seconds, at every checkpoint and
at the end (`storage.Mirror`); a killed run loses at most that window of metrics, never its
checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter

from phenaki_jax import storage

METRICS_FILE = "metrics.jsonl"


class Writers:
    """metrics.jsonl and TensorBoard (tensorboardX), written by process 0 only."""

    def __init__(self, workdir: str, sync_every_s: float = 30.0) -> None:
        self.active = jax.process_index() == 0
        self.tb: Any = None
        self.sync_every_s = sync_every_s
        self._last_sync = time.monotonic()
        if self.active:
            self.mirror = storage.Mirror(workdir, seed=(METRICS_FILE,))
            self.path = os.path.join(self.mirror.dir, METRICS_FILE)
            self.tb = SummaryWriter(self.mirror.dir, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def images(self, step: int, name: str, images: np.ndarray) -> None:
        """images uint8 [N, H, W, 3]."""
        if self.active:
            self.tb.add_images(name, images, step, dataformats="NHWC")
            self.tb.flush()

    def sync(self) -> None:
        """Makes everything written so far visible in the workdir."""
        if self.active:
            self.tb.flush()
            self.mirror.sync()
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.active:
            self.tb.close()
            self.mirror.close()
