"""Stage 1: the C-ViViT tokenizer's state, train step and evaluation.

One train step: encode-quantize-decode, L2 + VQ (+ LPIPS + adversarial) loss, AdamW update,
dead-code restart every `quantizer.restart_every_steps`, and, when the adversarial loss is on,
one discriminator update with its own optimizer and LeCam regularisation. A step whose loss,
gradient norm or new parameters are not finite changes nothing but the counters.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from phenaki_jax.config import validation
from phenaki_jax.metrics import psnr_per_clip
from phenaki_jax.models import discriminator as disc_lib
from phenaki_jax.models import i3d, layers, quantizers
from phenaki_jax.models.cvivit import CViViT, float_to_frames, frames_to_float, token_grid
from phenaki_jax.models.perceptual import Perceptual
from phenaki_jax.stages import augment
from phenaki_jax.stages import state as state_lib
from phenaki_jax.stages.base import Stage

Array = jax.Array


def frame_weights(batch: dict[str, Array]) -> Array:
    """[B, T]: all frames of a video, only frame 0 of an image (its other frames are padding)."""
    b, t = batch["frames"].shape[:2]
    is_image = batch["is_image"].reshape(b, 1).astype(bool)
    first = (jnp.arange(t) == 0)[None, :]
    return jnp.where(is_image, first, True).astype(jnp.float32)


def token_frame_weights(batch: dict[str, Array], temporal_patch_size: int) -> Array:
    """[B, t]: the token frames that `frame_weights` keeps (an image: token frame 0 only).
    Token frame j > 0 covers frames 1 + (j - 1) * pt ... j * pt; it is real if any is."""
    w = frame_weights(batch)
    b, t = w.shape
    rest = w[:, 1:].reshape(b, (t - 1) // temporal_patch_size, temporal_patch_size).max(-1)
    return jnp.concatenate([w[:, :1], rest], axis=1)


class CViViTStage(Stage):
    """Builds and trains the tokenizer."""

    name = "cvivit"

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config
        self.model = CViViT.from_config(config)
        self.tx = state_lib.make_optimizer(config)
        self.use_adv = config.loss.adversarial_weight > 0
        self.use_perceptual = config.loss.perceptual_weight > 0
        if self.use_adv:
            d = config.discriminator
            self.disc = disc_lib.Discriminator(
                d.channels, d.max_channels, layers.dtype_of(d.get("dtype", "float32")),
                d.get("remat", "none"))
            self.disc_tx = state_lib.make_optimizer(config, config.discriminator.learning_rate)
        if self.use_perceptual:
            self.perceptual = Perceptual("alexnet")
        # The paper's video perceptual loss: frozen I3D weights ride in `aux["i3d"]`, left out
        # of checkpoints (`detached_aux`) and reloaded from the packaged weights.
        self.use_i3d = config.loss.get("video_perceptual_weight", 0.0) > 0
        self.tokens_shape = token_grid(config.data.num_frames, config.data.resolution,
                                       config.model.patch_size, config.model.temporal_patch_size)
        # The image stream (`data.image_batch_size` > 0): one-frame clips beside the batch.
        self.image_batch_size = config.data.get("image_batch_size", 0)
        self.augment_ops = validation.augment_ops(config.data.get("augment", ""))
        self.batch_axes = {"frames": ("batch", "time", "height", "width", "channels"),
                           "is_image": ("batch",)}
        if self.image_batch_size:
            self.batch_axes["image_frames"] = self.batch_axes["frames"]

    # -- shapes -----------------------------------------------------------------------------
    def example_batch(self, batch_size: int | None = None) -> dict[str, Array]:
        c = self.config
        b = c.batch_size if batch_size is None else batch_size
        r = c.data.resolution
        batch = {"frames": jnp.zeros((b, c.data.num_frames, r, r, 3), jnp.uint8),
                 "is_image": jnp.zeros((b,), jnp.int32)}
        if self.image_batch_size:
            bi = self.image_batch_size * b // c.batch_size
            batch["image_frames"] = jnp.zeros((bi, 1, r, r, 3), jnp.uint8)
        return batch

    def init(self, rng: Array) -> state_lib.TrainState:
        """The initial state with logically boxed parameters (unbox before use)."""
        x = frames_to_float(self.example_batch(1)["frames"])
        variables = self.model.init(jax.random.fold_in(rng, 0), x)
        params = variables["params"]
        model_state = {"vq_stats": variables["vq_stats"]}
        aux: dict[str, Any] = {}
        if self.use_adv:
            dparams = self.disc.init(jax.random.fold_in(rng, 1), x)["params"]
            aux = {"disc_params": dparams, "disc_opt_state": self.disc_tx.init(dparams),
                   "lecam_real": jnp.zeros((), jnp.float32),
                   "lecam_fake": jnp.zeros((), jnp.float32)}
        if self.use_i3d:  # shapes only: the weights are put in by prepare_new_state / attach
            aux["i3d"] = {k: jnp.zeros(v.shape, jnp.float32)
                          for k, v in self._i3d_weights.items()}
        return state_lib.initial_state(self.tx, params, self.config.ema_decay, model_state, aux)

    def detached_aux(self) -> tuple[str, ...]:
        return ("i3d",) if self.use_i3d else ()

    @functools.cached_property
    def _i3d_weights(self) -> dict[str, np.ndarray]:
        """The frozen I3D's weights, read once (for init's shapes and for the state)."""
        return {k: np.asarray(v, np.float32) for k, v in i3d.load_weights().items()}

    def _with_i3d(self, state: state_lib.TrainState, state_shardings: Any
                  ) -> state_lib.TrainState:  # noqa: ANN401
        if not self.use_i3d:
            return state
        aux = dict(state.aux)
        aux["i3d"] = jax.device_put(self._i3d_weights, state_shardings.aux["i3d"])
        return state.replace(aux=aux)

    def prepare_new_state(self, state: state_lib.TrainState, mesh: Any,
                          state_shardings: Any) -> state_lib.TrainState:  # noqa: ANN401
        return self._with_i3d(state, state_shardings)

    def attach(self, state: state_lib.TrainState, meta: dict[str, Any],
               state_shardings: Any) -> state_lib.TrainState:  # noqa: ANN401
        return self._with_i3d(state, state_shardings)

    # -- training -----------------------------------------------------------------------------
    def train_step(self, state: state_lib.TrainState, batch: dict[str, Array]
                   ) -> tuple[state_lib.TrainState, dict[str, Array]]:
        c = self.config
        rng = jax.random.fold_in(jax.random.key(c.seed), state.step)
        if self.augment_ops:
            # Everything below, the PSNR logged included, sees the transformed clips.
            batch = {**batch, "frames": augment.augment(
                batch["frames"], jax.random.fold_in(rng, 5), self.augment_ops, batch["is_image"])}
            if self.image_batch_size:
                batch["image_frames"] = augment.augment(
                    batch["image_frames"], jax.random.fold_in(rng, 6), self.augment_ops)
        x = frames_to_float(batch["frames"])
        w = frame_weights(batch)
        token_w = token_frame_weights(batch, c.model.temporal_patch_size)
        adv_on = (state.step >= c.loss.adversarial_start_step).astype(jnp.float32)
        # The discriminator sees padding frames as a constant in real and fake alike: nothing
        # to tell apart there, so no gradient asks the decoder to reconstruct padding.
        keep = w[:, :, None, None, None] > 0
        hide_padding = lambda v: jnp.where(keep, v, 0.0)

        xi = frames_to_float(batch["image_frames"]) if self.image_batch_size else None
        # The discriminator judges T-frame clips: an image of the stream is one, padded.
        with_images = lambda v, vi: (v if vi is None else jnp.concatenate(
            [v, jnp.pad(vi, ((0, 0), (0, v.shape[1] - 1), (0, 0), (0, 0), (0, 0)))]))

        def loss_fn(params: Any) -> tuple[Array, Any]:
            out, new_vars = self.model.apply({"params": params, **state.model_state}, x,
                                             update_stats=True, token_mask=token_w, images=xi,
                                             mutable=["vq_stats"])
            recon = out["recon"]
            recon_i = out.get("image_recon")
            # Every real frame weighs the same, the image stream's included.
            err = jnp.square(recon - x).mean(axis=(2, 3, 4))
            l2_sum, frames = (err * w).sum(), w.sum()
            if xi is not None:
                l2_sum = l2_sum + jnp.square(recon_i - xi).mean(axis=(2, 3, 4)).sum()
                frames = frames + xi.shape[0]
            l2 = l2_sum / frames
            loss = c.loss.l2_weight * l2 + c.loss.vq_weight * out["loss"]
            metrics = {"l2": l2, "vq_loss": out["loss"], "perplexity": out["perplexity"],
                       "batch_usage": out["batch_usage"]}
            if self.use_perceptual:
                # One frame per clip keeps LPIPS affordable: frame 0 for images, a random
                # frame for videos (chosen by the step's RNG, so resume reproduces it).
                t = jax.random.randint(jax.random.fold_in(rng, 2), (x.shape[0],), 0, x.shape[1])
                t = jnp.where(batch["is_image"] > 0, 0, t)
                pick = lambda v: jnp.take_along_axis(v, t[:, None, None, None, None], 1)[:, 0]
                fake, real = pick(recon), pick(x)
                if xi is not None:
                    fake = jnp.concatenate([fake, recon_i[:, 0]])
                    real = jnp.concatenate([real, xi[:, 0]])
                perc = self.perceptual(fake, real).mean()
                loss = loss + c.loss.perceptual_weight * perc
                metrics["perceptual"] = perc
            if self.use_i3d:
                # Video clips only (an image has no motion to judge); padding frames hidden.
                video = (batch["is_image"] == 0).astype(jnp.float32)
                i3d_loss = (i3d.perceptual_loss(jax.lax.stop_gradient(state.aux["i3d"]),
                                                hide_padding(recon), hide_padding(x)) * video
                            ).sum() / jnp.maximum(video.sum(), 1.0)
                loss = loss + c.loss.video_perceptual_weight * i3d_loss
                metrics["video_perceptual"] = i3d_loss
            if self.use_adv:
                fake_logits = self.disc.apply({"params": state.aux["disc_params"]},
                                              with_images(hide_padding(recon), recon_i))
                g_loss = disc_lib.generator_loss(fake_logits)
                loss = loss + adv_on * c.loss.adversarial_weight * g_loss
                metrics["g_loss"] = g_loss
            metrics["loss"] = loss
            return loss, (metrics, new_vars, (recon, recon_i), (out["z"], out["errors"]))

        (loss, (metrics, new_vars, (recon, recon_i), z_err)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        params, opt_state, grad_norm = state_lib.optimizer_update(self.tx, state, grads)
        model_state = {"vq_stats": new_vars["vq_stats"]}

        if c.quantizer.restart_every_steps > 0:
            params, model_state, restarted = self._maybe_restart(params, model_state, *z_err,
                                                                  rng, state.step)
            metrics["restarted_codes"] = restarted

        aux = state.aux
        if self.use_adv:
            fake_i = None if recon_i is None else jax.lax.stop_gradient(recon_i)
            aux, d_metrics = self._disc_update(
                state.aux, with_images(hide_padding(x), xi),
                with_images(hide_padding(jax.lax.stop_gradient(recon)), fake_i), adv_on)
            metrics.update(d_metrics)

        new_state = state_lib.commit(state, c.ema_decay, loss, grad_norm, params, opt_state,
                                     also_finite=aux, model_state=model_state, aux=aux)
        usage = model_state["vq_stats"]["quantizer"]["usage"]
        k = usage.shape[0]
        metrics.update({
            **state_lib.step_metrics(c, state, new_state, grad_norm),
            "codebook_usage": jnp.mean((usage > c.quantizer.dead_threshold / k)
                                       .astype(jnp.float32)),
            "psnr": psnr_per_clip(float_to_frames(recon), batch["frames"], w).mean(),
            **({} if recon_i is None else {"image_psnr": psnr_per_clip(
                float_to_frames(recon_i), batch["image_frames"]).mean()}),
        })
        return new_state, metrics

    def _maybe_restart(self, params: Any, model_state: Any, z: Array, errors: Array,
                       rng: Array, step: Array) -> tuple[Any, Any, Array]:
        c = self.config
        codebook = params["quantizer"]["codebook"]
        usage = model_state["vq_stats"]["quantizer"]["usage"]

        def restart(_: None) -> tuple[Array, Array, Array]:
            cb, u, n = quantizers.restart_dead_codes(
                codebook, usage, z.reshape(-1, z.shape[-1]), errors.reshape(-1),
                jax.random.fold_in(rng, 3), c.quantizer.dead_threshold)
            return cb, u, n.astype(jnp.float32)

        def keep(_: None) -> tuple[Array, Array, Array]:
            return codebook, usage, jnp.zeros((), jnp.float32)

        # A cond, not a select: the ranking of all batch tokens runs on restart steps only.
        # No restarts in the schedule's last part, where a moved code takes tokens while little
        # learning rate is left to adapt to it (docs/experiments/tokenizer-quality.md).
        stop = int(c.quantizer.get("restart_stop_fraction", 1.0) * c.total_steps)
        do = (((step + 1) % c.quantizer.restart_every_steps) == 0) & (step < stop)
        new_cb, new_usage, n = jax.lax.cond(do, restart, keep, None)
        params = {**params, "quantizer": {**params["quantizer"], "codebook": new_cb}}
        model_state = {"vq_stats": {"quantizer": {"usage": new_usage}}}
        return params, model_state, n

    def _disc_update(self, aux: dict[str, Any], real: Array, fake: Array, adv_on: Array
                     ) -> tuple[dict[str, Any], dict[str, Array]]:
        c = self.config

        def d_loss_fn(dparams: Any) -> tuple[Array, tuple[Array, Array]]:
            logits = self.disc.apply({"params": dparams}, jnp.concatenate([real, fake], 0))
            real_l, fake_l = jnp.split(logits, 2)
            loss = disc_lib.discriminator_loss(real_l, fake_l)
            loss = loss + c.loss.lecam_weight * disc_lib.lecam_penalty(
                real_l, fake_l, aux["lecam_real"], aux["lecam_fake"])
            return loss, (real_l.mean(), fake_l.mean())

        (d_loss, (real_m, fake_m)), g = jax.value_and_grad(d_loss_fn, has_aux=True)(
            aux["disc_params"])
        updates, opt = self.disc_tx.update(g, aux["disc_opt_state"], aux["disc_params"])
        new_params = optax.apply_updates(aux["disc_params"], updates)
        # Before the adversarial loss starts, the discriminator does not train either.
        on = adv_on > 0
        new_aux = {
            "disc_params": state_lib.select_tree(on, new_params, aux["disc_params"]),
            "disc_opt_state": state_lib.select_tree(on, opt, aux["disc_opt_state"]),
            "lecam_real": jnp.where(on, 0.99 * aux["lecam_real"] + 0.01 * real_m,
                                    aux["lecam_real"]),
            "lecam_fake": jnp.where(on, 0.99 * aux["lecam_fake"] + 0.01 * fake_m,
                                    aux["lecam_fake"]),
        }
        return new_aux, {"d_loss": d_loss, "d_real": real_m, "d_fake": fake_m}

    # -- evaluation -----------------------------------------------------------------------
    def eval_step(self, state: state_lib.TrainState, batch: dict[str, Array]
                  ) -> dict[str, Array]:
        """Per-batch sums, so the trainer can average over batches exactly."""
        variables = {"params": self.inference_params(state), **state.model_state}
        token_w = token_frame_weights(batch, self.config.model.temporal_patch_size)
        out = self.model.apply(variables, frames_to_float(batch["frames"]), token_mask=token_w)
        w = frame_weights(batch)
        recon = float_to_frames(out["recon"])
        ids = out["ids"]
        real = jnp.broadcast_to(token_w[:, :, None, None], ids.shape)
        counts = jnp.zeros((self.config.model.codebook_size,), jnp.float32).at[
            ids.reshape(-1)].add(real.reshape(-1))
        return {"psnr_sum": psnr_per_clip(recon, batch["frames"], w).sum(),
                "count": jnp.asarray(batch["frames"].shape[0], jnp.float32),
                "code_counts": counts}

    def finish_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        share = sums["code_counts"] / max(sums["code_counts"].sum(), 1)
        nz = share[share > 0]
        return {"eval_psnr": float(sums["psnr_sum"] / sums["count"]),
                "eval_codebook_used": float((sums["code_counts"] > 0).mean()),
                "eval_perplexity": float(np.exp(-(nz * np.log(nz)).sum()))}

    def summary_images(self, state: state_lib.TrainState, batch: dict[str, Array]) -> Array:
        """uint8 [N, H, T*W, 3]: each row the original clip over its reconstruction."""
        variables = {"params": self.inference_params(state), **state.model_state}
        recon = float_to_frames(self.model.apply(variables, frames_to_float(batch["frames"]))
                                ["recon"])
        orig = batch["frames"]
        b, t, h, w, ch = orig.shape
        grid = jnp.concatenate([orig, recon], axis=2)  # [B, T, 2H, W, 3]
        return grid.transpose(0, 2, 1, 3, 4).reshape(b, 2 * h, t * w, ch)
