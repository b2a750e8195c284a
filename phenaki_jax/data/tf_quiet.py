"""TensorFlow and seqio, imported once with TensorFlow's start-up messages off the terminal.

TensorFlow is only the input pipeline here (tf.data under seqio), on the host CPU. Loading
it prints, before its logging can be configured (TF_CPP_MIN_LOG_LEVEL does not reach them),
oneDNN notices and, on a machine without a GPU, a failed CUDA initialisation with an error
code: nothing a user can act on. Standard error is sent to a temporary file while TensorFlow
loads and sets up its devices (GPUs hidden from it: it needs none), and is shown only if the
import fails.
"""

from __future__ import annotations

import os
from typing import Any

from phenaki_jax.data.stderr import captured_stderr


def _load() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with captured_stderr():
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        tf.constant(0)  # the devices are set up (and CUDA probed) now, not at first use
        import seqio
    return tf, seqio


tf, seqio = _load()
