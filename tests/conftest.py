"""Shared fixtures. Heavy ones (a trained tiny tokenizer) are built once per session."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_config(name: str, arg: str = "variant=tiny"):
    """Loads configs/<name>.py the way --config does."""
    from phenaki_jax import config_lib

    return config_lib.load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), arg)


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m phenaki_jax.<module> args` from the repo root."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", f"phenaki_jax.{module}", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def config_loader():
    return load_config
