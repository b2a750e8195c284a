"""phenaki-plan: will a config's training step fit a TPU pod, and how fast might it run?

`phenaki-plan --config=configs/maskgit.py:variant=paper --topology=v4-64 [--config.KEY=V]`
compiles the stage's real training step for the pod with the TPU compiler (libtpu's
compile-only devices), on this machine, and prints one JSON line: the mesh, the per-device
batch, the compiler's per-device memory (argument, output, temporaries, aliased, total)
against the chip's HBM, `fits` and `headroom`, the compile time, the compiler's and the
analytic flops, and a step-time estimate at an assumed MFU. A step that does not fit is
`"fits": false` with the compiler's message, and the exit is still 0.

`phenaki-plan --matrix=paper --table=docs/plan.md` compiles the paper stages over a set of
pods, meshes, remat and attention choices (`train.plan.MATRICES`), one JSON line each, and
writes them as a Markdown table; `--matrix=tiny` is two small compiles.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "A TPU pod: v4-8 ... v4-256, v5litepod-8 "
                                "... v5litepod-256, v5p-8 ... v5p-256, v6e-8 ... v6e-256.")
_MFU = flags.DEFINE_float("mfu", 0.4, "The model-flops utilisation step_s_estimate assumes.")
_MATRIX = flags.DEFINE_string("matrix", None, "Compile a named set of plans instead: paper or "
                              "tiny.")
_TABLE = flags.DEFINE_string("table", None, "With --matrix: write the Markdown table here.")


def _quiet_libtpu(topology: str) -> None:
    # libtpu's start-up looks for the TPU it runs on; there is none, and it need not look.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compiling holds no TPU: several plans may run at once (libtpu otherwise takes a
    # machine-wide lock and refuses a second process).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _matrix(name: str) -> None:
    from phenaki_jax import storage
    from phenaki_jax.train.plan import MATRICES, matrix_config, matrix_table, plan

    if name not in MATRICES:
        raise UsageError(f"--matrix={name} is not a plan set; one of {', '.join(MATRICES)}")
    _quiet_libtpu(MATRICES[name][0][2])
    rows = []
    for stage, variant, topology, overrides in MATRICES[name]:
        row = plan(matrix_config(stage, variant, overrides), topology, _MFU.value)
        row["overrides"] = overrides
        rows.append(row)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    if _TABLE.value:
        storage.write_text(_TABLE.value, matrix_table(rows))


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _MATRIX.value:
        if _CONFIG.value is not None or _TOPOLOGY.value:
            raise UsageError("--matrix names its own configs and pods; drop --config and "
                             "--topology")
        _matrix(_MATRIX.value)
        return
    if _TABLE.value:
        raise UsageError("--table goes with --matrix")
    if _CONFIG.value is None:
        raise UsageError("--config is required")
    if not _TOPOLOGY.value:
        raise UsageError("--topology is required (e.g. --topology=v4-64)")
    _quiet_libtpu(_TOPOLOGY.value)
    from phenaki_jax.train.plan import plan

    sys.stdout.write(json.dumps(plan(_CONFIG.value, _TOPOLOGY.value, _MFU.value)) + "\n")
    sys.stdout.flush()


def run() -> None:
    run_command("phenaki-plan", main)


if __name__ == "__main__":
    run()
