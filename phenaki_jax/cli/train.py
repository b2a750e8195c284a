"""phenaki-train: `--config=configs/cvivit.py:variant=tiny --workdir=DIR [--config.KEY=V]`."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags, logging
from ml_collections import config_flags

from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process run (jax.distributed), with "
    "--num_processes and --process_id; on TPU VMs and SLURM, --multihost finds them.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Join the multi-process run JAX detects (TPU VM slices, SLURM, MPI).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise UsageError("--config is required (e.g. --config=configs/cvivit.py:variant=tiny)")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required")
    from phenaki_jax import distributed
    from phenaki_jax.train import loop

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _MULTIHOST.value)
    logging.set_verbosity(logging.INFO)
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("finished: %s", {k: v for k, v in summary.items() if k != "metrics"})


def run() -> None:
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.train.loop import TrainingError

    run_command("phenaki-train", main, (TrainingError, CheckpointError))


if __name__ == "__main__":
    run()
