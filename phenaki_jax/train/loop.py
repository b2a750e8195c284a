"""The one training loop, for every stage: `train_and_evaluate(config, workdir)`.

State is created sharded (abstract init with `jax.eval_shape`, shardings from the logical axis
names, then `jax.jit(init, out_shardings=...)`), restored from the newest complete checkpoint
if there is one, and advanced by a jitted step with explicit in/out shardings on one mesh.
The loop stops cleanly on SIGTERM (checkpoint, wait until durable, return), stops with a
`TrainingError` after `max_consecutive_nonfinite` bad steps, and logs metrics.jsonl,
TensorBoard scalars and images, and a progress line.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from phenaki_jax import checkpoint as ckpt_lib
from phenaki_jax import sharding, storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data import pipeline
from phenaki_jax.stages import registry
from phenaki_jax.stages.base import Stage
from phenaki_jax.stages.state import create_state
from phenaki_jax.train.preemption import Preemption
from phenaki_jax.train.writers import Writers


class TrainingError(RuntimeError):
    """The run cannot continue (divergence); the message is one line naming step and cause."""


def _first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
            if d:
                return d
        return None
    return None if a == b else prefix


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def jit_train_step(stage: Stage, mesh: jax.sharding.Mesh, state_shardings: Any
                   ) -> tuple[Any, dict[str, Any]]:
    """The stage's train step jitted with explicit shardings (state donated), and the batch
    shardings it expects; the trainer, phenaki-bench and the mesh tests all use this one."""
    batch_shardings = {k: sharding.logical_sharding(mesh, v)
                       for k, v in stage.batch_axes.items()}
    step = jax.jit(stage.train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))
    return step, batch_shardings


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.stage` into `workdir`, resuming from its newest complete checkpoint.

    Returns a summary dict: `status` ("completed" or "preempted"), `step`, last metrics.
    """
    config, stage = registry.for_training(config, jax.device_count())
    pipeline.get_provider(pipeline.data_name(config))  # an unknown data set fails first
    if config.data.get("image_batch_size", 0):
        pipeline.get_provider(config.data.image_name, config.data.resolution,
                              config.data.num_frames)
    storage.makedirs(workdir)  # an unreachable or missing bucket stops the run here
    mesh = sharding.make_mesh(config)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    steps = checkpointer.steps()
    if steps:
        _, stored = checkpointer.latest_config()
        diff = (_first_difference(stored.to_dict().get("model"), config.model.to_dict(),
                                  "config.model")
                or (None if stored.get("stage") == config.stage else "config.stage"))
        if diff:
            raise ConfigError(
                f"{diff} differs from the checkpoint in {checkpointer.directory}; use a new "
                "--workdir or the original value")

    with sharding.active(mesh):
        init, abstract, state_shardings = create_state(stage.init, mesh,
                                                       jax.random.key(config.seed))
        restored = checkpointer.restore_latest(stage.savable(abstract))
        if restored is None:
            state = init(jax.random.key(config.seed))
            state = stage.prepare_new_state(state, mesh, state_shardings)  # frozen parts
            start = 0
            logging.info("initialised a new %s run in %s", config.stage, workdir)
        else:
            state, meta = restored
            state = stage.attach(state, meta, state_shardings)  # a frozen T5, from its files
            start = int(meta["batches_consumed"])
            logging.info("resumed from step %d in %s", int(state.step), workdir)
        if jax.process_index() == 0:
            storage.write_text(storage.join(workdir, "config.json"),
                               config.to_json_best_effort(indent=2))

        train_step, batch_shardings = jit_train_step(stage, mesh, state_shardings)
        # Compiled once, not per evaluation; replicated so that every process can read it.
        summary_images = jax.jit(stage.summary_images, out_shardings=sharding.replicated(mesh))
        eval_step = jax.jit(stage.eval_step, in_shardings=(state_shardings, batch_shardings),
                            out_shardings=sharding.replicated(mesh))
        writers = Writers(workdir)
        summary: dict[str, Any] = {"status": "completed", "step": int(state.step)}

        def to_device(raw: dict[str, np.ndarray]) -> dict[str, jax.Array]:
            host = stage.host_batch(raw)
            return sharding.global_batch(mesh, {k: host[k] for k in stage.batch_axes})

        saved: list[int] = []  # steps saved by this process (a save may still be in flight)

        def save(step: int, force: bool = False) -> None:
            if step in saved:  # a preemption at a checkpoint step: that save already began
                return
            meta = {"step": step, "batches_consumed": step, "stage": config.stage,
                    "config": ckpt_lib.config_to_json(config), **stage.checkpoint_meta()}
            if checkpointer.save(step, stage.savable(state), meta, force=force):
                saved.append(step)

        def evaluate(step: int) -> dict[str, float]:
            sums: dict[str, np.ndarray] = {}
            batches = pipeline.host_batches(config, config.data.eval_split)
            first = None
            for _ in range(config.eval_batches):
                batch = to_device(next(batches))
                first = first or batch
                out = jax.device_get(eval_step(state, batch))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0) + np.asarray(v, np.float64)
            results = stage.finish_eval(sums)
            writers.scalars(step, results)
            if first is not None:
                images = np.asarray(jax.device_get(summary_images(state, first)))
                writers.images(step, "reconstructions", images[:4])
            logging.info("eval at step %d: %s", step,
                         ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
            return results

        total = config.total_steps
        eval_every = config.eval_every_steps if config.eval_batches else 0
        step = int(state.step)
        batches = pipeline.host_batches(config, config.data.train_split, start_batch=start)
        last_log_time, last_log_step = time.time(), step
        run_start = time.time()
        # The next batch is read and put on the devices while the current step computes:
        # dispatch is asynchronous, and only the finiteness check below waits for the step.
        batch = to_device(next(batches)) if step < total else None
        with Preemption() as preemption:
            while step < total:
                state, metrics = train_step(state, batch)
                step += 1
                batch = to_device(next(batches)) if step < total else None
                streak = int(jax.device_get(state.nonfinite_streak))
                if streak >= config.max_consecutive_nonfinite:
                    bad = jax.device_get(metrics)
                    checkpointer.wait()
                    raise TrainingError(
                        f"step {step}: loss or gradient norm not finite for {streak} consecutive "
                        f"steps (loss={float(bad['loss']):.4g}, "
                        f"grad_norm={float(bad['grad_norm']):.4g}); parameters were left at "
                        f"their last finite values, the newest checkpoint is finite")
                if step % config.log_every_steps == 0 or step == total:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.time()
                    dt = (now - last_log_time) / max(step - last_log_step, 1)
                    values["step_time_s"] = dt
                    values["examples_per_s"] = config.batch_size / dt if dt > 0 else 0.0
                    # Bad examples of a file-backed data set are skipped, never silently.
                    values["data_skipped_examples"] = float(pipeline.skipped_examples())
                    writers.scalars(step, values)
                    rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    extra = "".join(f" {k}={values[k]:.3f}" for k in ("psnr", "accuracy")
                                    if k in values)
                    logging.info("step %d/%d loss=%.4g%s | %.2f steps/s %.1f ex/s | ETA %s",
                                 step, total, values["loss"], extra,
                                 rate, values["examples_per_s"],
                                 _fmt_duration((total - step) / max(rate, 1e-9)))
                    last_log_time, last_log_step = now, step
                    summary["metrics"] = values
                if eval_every and step % eval_every == 0 and step < total:
                    evaluate(step)
                if step % config.checkpoint_every_steps == 0 and step < total:
                    save(step)
                    writers.sync()
                if preemption.should_stop(step) and step < total:
                    save(step, force=True)
                    checkpointer.wait()
                    logging.warning("preempted: checkpoint of step %d is durable; exiting", step)
                    summary.update(status="preempted", step=step)
                    checkpointer.close()
                    writers.close()
                    return summary
        if step not in checkpointer.steps() and step not in saved:
            save(step, force=True)
        checkpointer.wait()
        if config.eval_batches:
            summary["eval"] = evaluate(step)
        summary["step"] = step
        summary["train_time_s"] = time.time() - run_start
        checkpointer.close()
        writers.close()
        return summary
