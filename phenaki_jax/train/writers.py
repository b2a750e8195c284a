"""Where a run's metrics go: metrics.jsonl and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter


class Writers:
    """metrics.jsonl and TensorBoard (tensorboardX), written by process 0 only."""

    def __init__(self, workdir: str) -> None:
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb: Any = None
        if self.active:
            self.tb = SummaryWriter(workdir, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def images(self, step: int, name: str, images: np.ndarray) -> None:
        """images uint8 [N, H, W, 3]."""
        if self.active:
            self.tb.add_images(name, images, step, dataformats="NHWC")
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
