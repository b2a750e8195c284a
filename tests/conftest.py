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
def micro_tokenizer_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("micro_tokenizer_shared"))
    run_cli("train", *MICRO_TOKENIZER, f"--workdir={workdir}", check=True)
    return workdir


@pytest.fixture(scope="session")
def micro_transformer_dir(tmp_path_factory, micro_tokenizer_dir):
    workdir = str(tmp_path_factory.mktemp("micro_transformer"))
    run_cli("train", *MICRO_TRANSFORMER, f"--workdir={workdir}",
            f"--config.tokenizer_workdir={micro_tokenizer_dir}", check=True)
    return workdir
