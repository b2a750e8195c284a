"""`python -m phenaki_jax.tokenize` is `phenaki-tokenize` (phenaki_jax/cli/tokenize.py)."""

from phenaki_jax.cli.tokenize import run

if __name__ == "__main__":
    run()
