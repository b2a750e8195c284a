"""`python -m phenaki_jax.bench` is `phenaki-bench` (phenaki_jax/cli/bench.py)."""

from phenaki_jax.cli.bench import run

if __name__ == "__main__":
    run()
