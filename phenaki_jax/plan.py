"""`python -m phenaki_jax.plan` is `phenaki-plan` (phenaki_jax/cli/plan.py)."""

from phenaki_jax.cli.plan import run

if __name__ == "__main__":
    run()
