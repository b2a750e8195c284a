"""Shared fixtures. Heavy ones (a trained micro tokenizer and transformer) are built once per
test run, in the background from collection on, by whichever xdist worker gets there first."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on the CPU, also where libtpu is installed (phenaki-plan's compile-only TPU
# devices need no TPU platform); the processes they start inherit this.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def load_config(name: str, arg: str = "variant=tiny"):
    """Loads configs/<name>.py the way --config does."""
    from phenaki_jax.config import parsing

    return parsing.load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), arg)


# The shapes world's palette as its rules (docs/shapes_world.md) give it: the golden values
# the renderer's and the judge's tests check against.
SPEC_PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}


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


# LLVM's optimisation level for the code XLA generates, in the pytest processes and the
# processes tests start. Tests run a few steps of small models, so compiling dominates them:
# level 0 halves the compile time of a tiny tokenizer's train step and makes the step itself
# ~2.5x slower, which saves a fifth of the suite (docs/experiments/test-suite.md). The
# arithmetic is the same IEEE arithmetic (XLA's fast-math is off either way): a resumed run
# compiled at level 0 repeats an optimised run's losses to 1e-5. The trained fixtures below
# run hundreds of steps and compile optimised; PHENAKI_TEST_OPTIMIZE=1 compiles everything
# optimised.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def _xla_flags(flags: str, optimize: bool) -> str:
    flags = flags.replace(FAST_COMPILE, "").strip()
    return flags if optimize else f"{flags} {FAST_COMPILE}".strip()


_OPTIMIZE_ALL = os.environ.get("PHENAKI_TEST_OPTIMIZE", "") not in ("", "0")
os.environ["XLA_FLAGS"] = _xla_flags(os.environ.get("XLA_FLAGS", ""), _OPTIMIZE_ALL)


def subprocess_env(optimize: bool = False, **extra: str) -> dict[str, str]:
    """The environment for a process a test starts: quiet TensorFlow, the run's shared
    compilation cache and XLA_FLAGS (those of `extra`, else this process's) with fast
    compilation unless `optimize`. The pytest process itself keeps JAX's default (no
    persistent cache), so that tests counting compilations in-process see every one."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "JAX_COMPILATION_CACHE_DIR": os.path.join(os.environ[_RUN_VAR], "xla_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **extra}
    env["XLA_FLAGS"] = _xla_flags(env.get("XLA_FLAGS", ""), optimize or _OPTIMIZE_ALL)
    return env


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600,
            check: bool = False, optimize: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m phenaki_jax.<module> args` from the repo root (`optimize`: see
    subprocess_env)."""
    proc = subprocess.run([sys.executable, "-m", f"phenaki_jax.{module}", *args], cwd=ROOT,
                          env=subprocess_env(optimize, **(env or {})), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def config_loader():
    return load_config


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A command failed with exactly one `program: error: ...` line holding every needle,
    and no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]


# A tokenizer run of a few steps, for the tests of the commands around training. One layer
# per stack: what these tests check does not depend on depth, and each layer adds seconds of
# compilation to every process.
MICRO = ["--config=configs/cvivit.py:variant=tiny", "--config.total_steps=6",
         "--config.batch_size=4", "--config.model.width=32", "--config.model.mlp_dim=64",
         "--config.log_every_steps=2", "--config.checkpoint_every_steps=3",
         "--config.eval_batches=1", "--config.warmup_steps=1",
         "--config.model.spatial_layers=1", "--config.model.temporal_layers=1"]


# A small but trained pair of models for the transformer and story tests: the tokenizer long
# enough that its tokens carry colour, shape and position, the transformer long enough that
# its text matters on every CPU type (400 steps left it at a text gain of 0.06 nats on one
# x86 type, where no prompt changed a single token; 1600 steps give 0.22 there).
# (The tiny tokenizer first learns an all-background code; it needs ~600 steps to see objects.)
MICRO_TOKENIZER = ["--config=configs/cvivit.py:variant=tiny", "--config.total_steps=800",
                   "--config.batch_size=8", "--config.model.width=64",
                   "--config.model.mlp_dim=128", "--config.model.codebook_size=256",
                   "--config.log_every_steps=100", "--config.checkpoint_every_steps=800",
                   "--config.eval_batches=0", "--config.warmup_steps=50",
                   "--config.quantizer.restart_every_steps=50",
                   # videos only, as the demo's tokenizer: the story tests' thresholds were
                   # set on it
                   "--config.data.image_batch_size=0", "--config.ema_decay=0",
                   "--config.quantizer.restart_stop_fraction=1"]
# Its periodic checkpoint: the resume test runs the last 200 steps again from there.
MICRO_TRANSFORMER_RESUME_STEP = 1400
MICRO_TRANSFORMER = ["--config=configs/maskgit.py:variant=tiny", "--config.total_steps=1600",
                     "--config.batch_size=8", "--config.model.width=64",
                     "--config.model.num_layers=2", "--config.model.num_heads=2",
                     "--config.model.mlp_dim=128",
                     "--config.text.embed_dim=32", "--config.text.num_layers=1",
                     "--config.text.num_heads=2", "--config.text.mlp_dim=64",
                     "--config.log_every_steps=10",
                     f"--config.checkpoint_every_steps={MICRO_TRANSFORMER_RESUME_STEP}",
                     "--config.eval_batches=16", "--config.warmup_steps=10",
                     "--config.sampling.num_steps=4", "--config.learning_rate=3e-3"]


# Processes that `_train_micro` started and that may still run: a run stopped early (-x, an
# interrupt) kills them instead of leaving them training into a deleted directory.
_CHILDREN: list[subprocess.Popen] = []


def _train_micro(args: list[str], workdir: str) -> None:
    """Trains one micro model (optimised compile) into `workdir`; raises with its stderr."""
    child = subprocess.Popen([sys.executable, "-m", "phenaki_jax.train", *args,
                              f"--workdir={workdir}"], cwd=ROOT, env=subprocess_env(True),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _CHILDREN.append(child)
    _, err = child.communicate()
    if child.returncode != 0:
        raise AssertionError(f"training {workdir} failed ({child.returncode}):\n{err[-4000:]}")


def _micro_tokenizer() -> str:
    return shared_workdir("micro_tokenizer", lambda w: _train_micro(MICRO_TOKENIZER, w))


def _micro_transformer() -> str:
    tokenizer = _micro_tokenizer()
    return shared_workdir("micro_transformer", lambda w: _train_micro(
        [*MICRO_TRANSFORMER, f"--config.tokenizer_workdir={tokenizer}"], w))


@pytest.fixture(scope="session")
def micro_tokenizer_dir():
    return _micro_tokenizer()


@pytest.fixture(scope="session")
def micro_transformer_dir(micro_tokenizer_dir):
    return _micro_transformer()


# Modules in the order the two xdist workers should take them (`--no-loadscope-reorder`),
# heaviest first so that no worker is left with a long module at the end (the wall seconds
# are one suite run's). The modules that use the micro models come after the four heaviest,
# by when the background build (below) has finished. Unlisted modules run last.
MODULE_ORDER = [
    "test_reliability.py",  # 213 s
    "test_multiprocess.py",  # 184 s
    "test_sharding.py",  # 163 s
    "test_cli_tokenizer.py",  # 162 s
    "test_cli_transformer.py",  # 245 s, and the micro models
    "test_story.py",  # 100 s, and the micro models
    "test_gcs.py",  # 110 s, and the micro transformer
    "test_plan.py",  # the TPU compiler
    # Unlisted modules run last, in path order: the long ones are placed here instead, so that
    # neither worker is left with a long module while the other has nothing to do.
    "test_i3d.py",  # I3D at 224 px: FVD and the network's checks
    "test_real_video.py",  # 49 s: phenaki-eval on real clips
    "test_editor.py",  # the editor's server and browser
    "test_prepare.py",
    "test_real_media.py",
    "test_benchmarks.py",
    "test_prepared_training.py",  # 45 s: prepare, train both stages, story
    "test_cvivit_losses.py",  # 85 s
    "test_cvivit.py",  # 76 s
    "test_manifests.py",  # 59 s
    "test_maskgit.py",  # 47 s
    "test_shapes_world.py",  # 39 s
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(MODULE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: modules stay whole
    # Start training the micro models now, in the background, if any collected test needs
    # them: waiting for them when the first such test starts left a core idle for minutes.
    # Every process that collects starts this; `shared_workdir` builds them once.
    if any({"micro_tokenizer_dir", "micro_transformer_dir"} & set(item.fixturenames)
           for item in items):
        threading.Thread(target=_build_in_background, daemon=True).start()


def _build_in_background() -> None:
    try:
        _micro_transformer()
    except Exception:  # noqa: BLE001 - the fixtures rebuild and report the failure
        pass


def pytest_sessionfinish(session, exitstatus):
    for child in _CHILDREN:
        if child.poll() is None:
            child.kill()
