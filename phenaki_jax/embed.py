"""`python -m phenaki_jax.embed` is `phenaki-embed` (phenaki_jax/cli/embed.py)."""

from phenaki_jax.cli.embed import run

if __name__ == "__main__":
    run()
