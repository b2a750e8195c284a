"""Shared fixtures. Heavy ones (a trained micro tokenizer and transformer) are built once per
test run, whichever xdist worker needs them first."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_config(name: str, arg: str = "variant=tiny"):
    """Loads configs/<name>.py the way --config does."""
    from phenaki_jax import config_lib

    return config_lib.load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), arg)


_RUN_VAR = "PHENAKI_TEST_RUN_DIR"


def pytest_configure(config):
    # One directory per test run, shared by every process the run starts (xdist workers
    # inherit it from the controller): a persistent XLA compilation cache, since many tests
    # train or restore the same small models in fresh processes and each used to compile the
    # same steps again, and the workdirs that `shared_workdir` builds once.
    if _RUN_VAR not in os.environ:
        os.environ[_RUN_VAR] = tempfile.mkdtemp(prefix="phenaki-test-run-")
        config.phenaki_owned_run_dir = os.environ[_RUN_VAR]


def pytest_unconfigure(config):
    owned = getattr(config, "phenaki_owned_run_dir", None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


def shared_workdir(name: str, build: Callable[[str], object]) -> str:
    """The directory `build(workdir)` fills, built once per test run by whichever process asks
    first; the others wait for it and reuse it. Tests must copy it before changing it."""
    workdir = os.path.join(os.environ[_RUN_VAR], name)
    with open(workdir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(workdir + ".done"):
                shutil.rmtree(workdir, ignore_errors=True)  # what a failed attempt left
                os.makedirs(workdir)
                build(workdir)
                open(workdir + ".done", "w").close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return workdir


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a process a test starts: quiet TensorFlow and the run's shared
    compilation cache. The pytest process itself keeps JAX's default (no persistent cache),
    so that tests counting compilations in-process see every one."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
            "JAX_COMPILATION_CACHE_DIR": os.path.join(os.environ[_RUN_VAR], "xla_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **extra}


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m phenaki_jax.<module> args` from the repo root."""
    proc = subprocess.run([sys.executable, "-m", f"phenaki_jax.{module}", *args], cwd=ROOT,
                          env=subprocess_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def config_loader():
    return load_config


# A small but trained pair of models for the transformer and story tests: the tokenizer long
# enough that its tokens carry colour, shape and position, the transformer long enough that
# its text matters.
# (The tiny tokenizer first learns an all-background code; it needs ~600 steps to see objects.)
MICRO_TOKENIZER = ["--config=configs/cvivit.py:variant=tiny", "--config.total_steps=800",
                   "--config.batch_size=8", "--config.model.width=64",
                   "--config.model.mlp_dim=128", "--config.model.codebook_size=256",
                   "--config.log_every_steps=100", "--config.checkpoint_every_steps=800",
                   "--config.eval_batches=1", "--config.warmup_steps=50",
                   "--config.eval_every_steps=0", "--config.quantizer.restart_every_steps=50"]
MICRO_TRANSFORMER = ["--config=configs/maskgit.py:variant=tiny", "--config.total_steps=400",
                     "--config.batch_size=8", "--config.model.width=64",
                     "--config.model.num_layers=2", "--config.model.num_heads=2",
                     "--config.model.mlp_dim=128", "--config.tokens.vocab_size=256",
                     "--config.text.embed_dim=32", "--config.text.num_layers=1",
                     "--config.text.num_heads=2", "--config.text.mlp_dim=64",
                     "--config.log_every_steps=10", "--config.checkpoint_every_steps=200",
                     "--config.eval_batches=16", "--config.warmup_steps=10",
                     "--config.sampling.num_steps=4", "--config.learning_rate=3e-3"]


@pytest.fixture(scope="session")
def micro_tokenizer_dir():
    return shared_workdir("micro_tokenizer", lambda workdir: run_cli(
        "train", *MICRO_TOKENIZER, f"--workdir={workdir}", check=True))


@pytest.fixture(scope="session")
def micro_transformer_dir(micro_tokenizer_dir):
    return shared_workdir("micro_transformer", lambda workdir: run_cli(
        "train", *MICRO_TRANSFORMER, f"--workdir={workdir}",
        f"--config.tokenizer_workdir={micro_tokenizer_dir}", check=True))
