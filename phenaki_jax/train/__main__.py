"""`python -m phenaki_jax.train` is `phenaki-train` (the contract's module form of the command;
the one import of the commands from below them, allowed in .importlinter)."""

from phenaki_jax.cli.train import run

run()
