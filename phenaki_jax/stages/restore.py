"""Reading a stage's checkpoint: its config, and its state restored onto a mesh.

Inference, evaluation and a transformer run that freezes a trained tokenizer all read
checkpoints through here, never through the training loop.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from phenaki_jax import sharding, storage
from phenaki_jax.checkpoint import Checkpointer, CheckpointError
from phenaki_jax.config import ConfigError
from phenaki_jax.stages.base import Stage
from phenaki_jax.stages.state import create_state

STAGE_NAMES = {"cvivit": "a C-ViViT tokenizer", "maskgit": "a transformer"}


def read_config(workdir: str, expected_stage: str | None = None,
                name: str = "--workdir") -> tuple[int, ml_collections.ConfigDict]:
    """(step, config) stored with the newest readable checkpoint of `workdir`; `name` is how
    errors name the directory (a flag or a config field)."""
    if not storage.isdir(workdir):
        raise CheckpointError(f"{name}={workdir} does not exist: no checkpoint to read")
    step, config = Checkpointer(workdir, read_only=True).latest_config()
    if expected_stage and config.get("stage") != expected_stage:
        raise CheckpointError(f"{name}={workdir} holds a {config.get('stage')!r} checkpoint, "
                              f"expected {expected_stage!r}: not "
                              f"{STAGE_NAMES.get(expected_stage, expected_stage)}")
    return step, config


def read_meta(workdir: str) -> dict[str, Any]:
    """The metadata stored with the newest readable checkpoint of `workdir`."""
    return Checkpointer(workdir, read_only=True).latest_meta()[1]


def tokenizer_of(config: ml_collections.ConfigDict) -> tuple[int, ml_collections.ConfigDict]:
    """(step, config) of the C-ViViT a transformer config trains on (`tokenizer_workdir`)."""
    workdir = config.tokenizer_workdir
    if not workdir:
        raise ConfigError("config.tokenizer_workdir is empty; set it to the workdir of a trained "
                          "C-ViViT (--config.tokenizer_workdir=DIR)")
    if not storage.isdir(workdir):
        raise ConfigError(f"config.tokenizer_workdir={workdir} does not exist")
    try:
        return read_config(workdir, "cvivit", "config.tokenizer_workdir")
    except CheckpointError as e:
        raise ConfigError(str(e)) from e


def restore_state(workdir: str, stage: Stage, mesh: jax.sharding.Mesh | None = None,
                  step: int | None = None) -> Any:  # noqa: ANN401 - a TrainState
    """`stage`'s state from `workdir`'s newest complete checkpoint (or `step`'s), onto `mesh`
    (default: every local device on `data`), whatever mesh it was trained on."""
    checkpointer = Checkpointer(workdir, read_only=True)
    if step is not None and step not in (kept := checkpointer.steps()):
        raise CheckpointError(f"{workdir} has no checkpoint of step {step} (it has {kept})")
    if mesh is None:
        config = ml_collections.ConfigDict(stage.config.to_dict())
        config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
        mesh = sharding.make_mesh(config)
    with sharding.active(mesh):
        _, abstract, shardings = create_state(stage.init, mesh, jax.random.key(0))
        abstract = stage.savable(abstract)
        restored = (checkpointer.restore_latest(abstract) if step is None
                    else checkpointer.restore(step, abstract))
        if restored is None:
            raise CheckpointError(f"no complete checkpoint in {workdir}")
        return stage.attach(*restored, shardings)
