"""`python -m phenaki_jax.train` is `phenaki-train`."""

from phenaki_jax.train.main import run

run()
