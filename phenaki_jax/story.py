"""`python -m phenaki_jax.story` is `phenaki-story` (phenaki_jax/cli/story.py)."""

from phenaki_jax.cli.story import run

if __name__ == "__main__":
    run()
