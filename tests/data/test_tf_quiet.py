"""Loading the input pipeline prints nothing: TensorFlow's start-up messages (oneDNN notices,
a failed CUDA initialisation on a machine without a GPU) stay off the terminal."""

import os
import subprocess
import sys

from conftest import ROOT


def test_loading_the_input_pipeline_prints_nothing():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    proc = subprocess.run([sys.executable, "-c", "import phenaki_jax.data.pipeline"],
                          cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "" and proc.stdout == ""
