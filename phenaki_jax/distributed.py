"""Multi-process runs: one JAX process per host (or per group of CPU cores) on one mesh."""

from __future__ import annotations

import jax

from phenaki_jax.config import ConfigError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, multihost: bool = False) -> None:
    """Joins a multi-process run; does nothing for a single process.

    Either all of `coordinator_address` ("host:port" of process 0), `num_processes` and
    `process_id` are given (any machines, CPU included: the processes' collectives then go
    through gloo), or `multihost` asks JAX to find them itself, as it does on TPU VMs, SLURM
    and Open MPI. Initialising also starts JAX's preemption service, which the trainer uses to
    stop every process at the same step.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("--coordinator_address, --num_processes and --process_id go together")
    if all(given):
        if num_processes < 1:
            raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif multihost:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"--multihost: JAX found no cluster to join ({e}); give "
                              "--coordinator_address, --num_processes and --process_id") from e
