"""Orbax checkpoints that a preempted or killed run can always resume from.

Layout: DIR/checkpoints/<step>/{state, meta}, DIR local or gs:// (`storage`). `state` is the
whole TrainState (parameters, optimizer states, EMA, quantizer statistics, discriminator);
`meta` is JSON with the step, the data position and the full config, so the story decoder
needs nothing but this directory. Orbax writes into a temporary directory and finalises it
when every host has finished (a rename on disk, a commit marker on GCS), so a SIGKILL
mid-save never leaves a step that looks complete. A complete step whose files were later
truncated or corrupted fails to restore; `restore_latest` then warns and falls back to the
previous step. Every host calls save (orbax coordinates them): saving only on host 0 deadlocks.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from phenaki_jax import storage


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


def checkpoint_dir(workdir: str) -> str:
    return storage.join(storage.resolve(workdir), "checkpoints")


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _non_finite_leaves(state: Any) -> list[str]:  # noqa: ANN401
    """Paths of the floating-point leaves holding a non-finite value. Checked on the devices,
    so that leaves sharded over several processes (FSDP) need no gathering and every process
    reaches the same verdict."""
    leaves = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state)
              if np.issubdtype(x.dtype, np.inexact)]
    if not leaves:
        return []
    arrays = [x for _, x in leaves]
    sharding = arrays[0].sharding
    out = (NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding)
           else None)
    finite = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]),
                     out_shardings=out)(arrays)
    return [path for (path, _), ok in zip(leaves, np.asarray(jax.device_get(finite)),
                                          strict=True) if not ok]


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False,
                 async_save: bool = True) -> None:
        self.directory = checkpoint_dir(workdir)
        if read_only and not storage.isdir(self.directory):
            raise CheckpointError(f"no checkpoints directory at {self.directory}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))
        # Orbax deletes the temporary directories of killed saves in a background thread and
        # waits for it only in save(), not in close(). A run that stops before its first save
        # (a refused config, a finished workdir) would exit with that thread still running and
        # die in it with a traceback. Waiting here costs one directory listing. The future is
        # private to orbax (pinned in setup.py); should it go, the leftover-temporary-directory
        # test in test_reliability.py fails.
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
            self.manager._cleanup_tmp_directory_future = None

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any],
             force: bool = False) -> bool:
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores one step onto the shardings carried by `abstract_state`'s leaves."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state = restored["state"]
        bad = _non_finite_leaves(state)
        if bad:
            raise CheckpointError(f"checkpoint step {step} holds non-finite values in {bad[0]}")
        return state, dict(restored["meta"])

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest step that restores cleanly, or None if there is no checkpoint at all.

        A step that fails to restore is skipped with a warning; if every step fails, raises.
        """
        steps = self.steps()
        for step in reversed(steps):
            try:
                return self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means: this step is unusable
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                logging.warning("checkpoint step %d in %s is unusable (%s); trying an older one",
                                step, self.directory, first[:300])
        if steps:
            raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could "
                                  "be restored")
        return None

    def latest_meta(self) -> tuple[int, dict[str, Any]]:
        """(step, meta) of the newest checkpoint whose metadata reads (for inference)."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        for step in reversed(steps):
            try:
                return step, self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any failure means: try an older step
                logging.warning("checkpoint step %d metadata unreadable (%s)", step, e)
        raise CheckpointError(f"no checkpoint in {self.directory} has readable metadata")

    def latest_config(self) -> tuple[int, ml_collections.ConfigDict]:
        """The config stored with the newest readable checkpoint."""
        step, meta = self.latest_meta()
        return step, ml_collections.ConfigDict(meta["config"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
