"""`python -m phenaki_jax.demo` is `phenaki-demo` (phenaki_jax/cli/demo.py)."""

from phenaki_jax.cli.demo import run

if __name__ == "__main__":
    run()
