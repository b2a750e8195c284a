"""`python -m phenaki_jax.evaluate` is `phenaki-eval` (phenaki_jax/cli/eval.py)."""

from phenaki_jax.cli.eval import run

if __name__ == "__main__":
    run()
