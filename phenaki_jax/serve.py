"""`python -m phenaki_jax.serve` is `phenaki-serve` (phenaki_jax/cli/serve.py)."""

from phenaki_jax.cli.serve import run

if __name__ == "__main__":
    run()
