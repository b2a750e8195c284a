"""The one training loop, for every stage: `train_and_evaluate(config, workdir)`.

State is created sharded (abstract init with `jax.eval_shape`, shardings from the logical axis
names, then `jax.jit(init, out_shardings=...)`), restored from the newest complete checkpoint
if there is one, and advanced by a jitted step with explicit in/out shardings on one mesh.
The loop stops cleanly on SIGTERM (checkpoint, wait until durable, return), stops with a
`TrainingError` after `max_consecutive_nonfinite` bad steps, and logs metrics.jsonl,
TensorBoard scalars and images, and a progress line.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from phenaki_jax import config_lib, sharding
from phenaki_jax.data import pipeline
from phenaki_jax.train import checkpoint as ckpt_lib


class TrainingError(RuntimeError):
    """The run cannot continue (divergence); the message is one line naming step and cause."""


def make_stage(config: ml_collections.ConfigDict, purpose: str = "train"):  # noqa: ANN201
    """The stage object `config.stage` names ("cvivit" or "maskgit").

    `purpose` matters to the transformer only: "train" reads its tokenizer checkpoint,
    "bench" needs none, "inference" builds the state's structure for the story decoder.
    """
    if config.stage == "cvivit":
        from phenaki_jax.train.cvivit_stage import CViViTStage

        return CViViTStage(config)
    if config.stage == "maskgit":
        from phenaki_jax.train.maskgit_stage import MaskGITStage

        return MaskGITStage(config, purpose)
    raise config_lib.ConfigError(f"config.stage must be one of {config_lib.STAGES}, "
                                 f"got {config.stage!r}")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             purpose: str = "train") -> None:
    """Every check that needs no compilation: config fields, mesh, stage specifics."""
    config_lib.validate_common(config, num_devices)
    if config.stage == "cvivit":
        from phenaki_jax.train import cvivit_stage

        cvivit_stage.validate(config)
        images = config.data.get("image_batch_size", 0)
        if num_devices is not None and images:
            data_axis = config_lib.mesh_shape(config, num_devices)["data"]
            if images % data_axis:
                raise config_lib.ConfigError(
                    f"config.data.image_batch_size={images} is not divisible by the mesh's "
                    f"data axis ({data_axis} devices)")
    else:
        from phenaki_jax.train import maskgit_stage

        maskgit_stage.validate(config, purpose)
        if num_devices is not None:
            model_axis = config_lib.mesh_shape(config, num_devices)["model"]
            if config.tokens.vocab_size % model_axis:
                raise config_lib.ConfigError(
                    f"config.tokens.vocab_size={config.tokens.vocab_size} is not divisible by "
                    f"the mesh's model axis ({model_axis}), over which the logits are split")


def _first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
            if d:
                return d
        return None
    return None if a == b else prefix


class _Preemption:
    """SIGTERM makes the loop finish its step, save, and return.

    One process: a Python SIGTERM handler sets a flag. Several processes (a TPU pod, or
    `--num_processes`): JAX's preemption service, which `jax.distributed.initialize` starts,
    takes the signal on whichever process gets it and agrees with all of them on one step to
    stop at; a flag per process could stop them at different steps, and a checkpoint saved by
    some processes only would never complete.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._multiprocess = jax.process_count() > 1
        if self._multiprocess and not jax.distributed.is_initialized():
            # E.g. a TPU slice started without --multihost: its hosts run, but nothing can
            # agree on a step, so SIGTERM keeps its default action (the periodic checkpoints
            # stay; a half-written one is never listed).
            logging.warning("%d processes without jax.distributed: SIGTERM will end this run "
                            "without a checkpoint; start it with --multihost or "
                            "--coordinator_address", jax.process_count())

    def __enter__(self) -> _Preemption:
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ANN401
        logging.warning("SIGTERM received: finishing the current step, then checkpointing")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if not self._multiprocess:
            return self.requested
        reached = multihost_utils.reached_preemption_sync_point(step)
        if reached:
            logging.warning("preemption notice: every process stops after step %d", step)
        return bool(reached)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Writers:
    """metrics.jsonl and TensorBoard (tensorboardX), written by process 0 only."""

    def __init__(self, workdir: str) -> None:
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb: Any = None
        if self.active:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(workdir, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def images(self, step: int, name: str, images: np.ndarray) -> None:
        """images uint8 [N, H, W, 3]."""
        if self.active:
            self.tb.add_images(name, images, step, dataformats="NHWC")
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def create_state(stage: Any, mesh: jax.sharding.Mesh, rng: jax.Array
                 ) -> tuple[Any, Any, Any]:
    """Returns (init_fn, abstract unboxed state with shardings, state shardings)."""
    boxed = jax.eval_shape(stage.init, rng)
    state_shardings = sharding.tree_shardings(mesh, boxed)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), state_shardings)

    def init_fn(key: jax.Array) -> Any:
        return nn.unbox(stage.init(key))

    init = jax.jit(init_fn, out_shardings=state_shardings)
    return init, abstract, state_shardings


def jit_train_step(stage: Any, mesh: jax.sharding.Mesh, state_shardings: Any
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
    validate(config, jax.device_count())
    pipeline.get_provider(pipeline.data_name(config))  # an unknown data set fails first
    if config.data.get("image_batch_size", 0):
        pipeline.get_provider(config.data.image_name, config.data.resolution,
                              config.data.num_frames)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config)
    stage = make_stage(config)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    steps = checkpointer.steps()
    if steps:
        _, stored = checkpointer.latest_config()
        diff = (_first_difference(stored.to_dict().get("model"), config.model.to_dict(),
                                  "config.model")
                or (None if stored.get("stage") == config.stage else "config.stage"))
        if diff:
            raise config_lib.ConfigError(
                f"{diff} differs from the checkpoint in {checkpointer.directory}; use a new "
                "--workdir or the original value")

    with sharding.axis_rules(), mesh:
        init, abstract, state_shardings = create_state(stage, mesh, jax.random.key(config.seed))
        restored = checkpointer.restore_latest(abstract)
        if restored is None:
            state = init(jax.random.key(config.seed))
            if hasattr(stage, "prepare_new_state"):  # frozen parts: the tokenizer, T5
                state = stage.prepare_new_state(state, mesh, state_shardings)
            start = 0
            logging.info("initialised a new %s run in %s", config.stage, workdir)
        else:
            state, meta = restored
            start = int(meta["batches_consumed"])
            logging.info("resumed from step %d in %s", int(state.step), workdir)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))

        train_step, batch_shardings = jit_train_step(stage, mesh, state_shardings)
        # Compiled once, not per evaluation; replicated so that every process can read it.
        summary_images = jax.jit(stage.summary_images, out_shardings=sharding.replicated(mesh))
        eval_step = jax.jit(stage.eval_step, in_shardings=(state_shardings, batch_shardings),
                            out_shardings=sharding.replicated(mesh))
        writers = _Writers(workdir)
        summary: dict[str, Any] = {"status": "completed", "step": int(state.step)}

        def to_device(host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
            if hasattr(stage, "host_batch"):
                host = stage.host_batch(host)
            return sharding.global_batch(mesh, {k: host[k] for k in stage.batch_axes})

        def save(step: int, force: bool = False) -> None:
            meta = {"step": step, "batches_consumed": step, "stage": config.stage,
                    "config": ckpt_lib.config_to_json(config)}
            checkpointer.save(step, state, meta, force=force)

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
        with _Preemption() as preemption:
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
                if preemption.should_stop(step) and step < total:
                    save(step, force=True)
                    checkpointer.wait()
                    logging.warning("preempted: checkpoint of step %d is durable; exiting", step)
                    summary.update(status="preempted", step=step)
                    checkpointer.close()
                    writers.close()
                    return summary
        if step not in checkpointer.steps():
            save(step, force=True)
        checkpointer.wait()
        if config.eval_batches:
            summary["eval"] = evaluate(step)
        summary["step"] = step
        summary["train_time_s"] = time.time() - run_start
        checkpointer.close()
        writers.close()
        return summary


def restore_for_inference(workdir: str, mesh: jax.sharding.Mesh | None = None,
                          expected_stage: str | None = None,
                          tokenizer: ml_collections.ConfigDict | None = None,
                          step: int | None = None) -> tuple[Any, Any, Any]:
    """Loads (config, stage, state) from the newest complete checkpoint in `workdir` (or from
    `step`'s) onto this machine's mesh (whatever mesh the run was trained on). For a
    transformer, `tokenizer` is the config of the tokenizer to pair it with (default: the one
    it names)."""
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    if step is not None and step not in (kept := checkpointer.steps()):
        raise ckpt_lib.CheckpointError(f"{workdir} has no checkpoint of step {step} "
                                       f"(it has {kept})")
    _, config = checkpointer.latest_config()
    if expected_stage and config.get("stage") != expected_stage:
        raise ckpt_lib.CheckpointError(
            f"{workdir} holds a '{config.get('stage')}' checkpoint, expected '{expected_stage}'")
    config.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    if config.stage == "maskgit":
        from phenaki_jax.train.maskgit_stage import MaskGITStage

        stage = MaskGITStage(config, "inference", tokenizer=tokenizer)
    else:
        stage = make_stage(config, "inference")
    mesh = mesh or sharding.make_mesh(config)
    with sharding.axis_rules(), mesh:
        _, abstract, _ = create_state(stage, mesh, jax.random.key(0))
        restored = (checkpointer.restore_latest(abstract) if step is None
                    else checkpointer.restore(step, abstract))
    if restored is None:
        raise ckpt_lib.CheckpointError(f"no complete checkpoint in {workdir}")
    return config, stage, restored[0]
