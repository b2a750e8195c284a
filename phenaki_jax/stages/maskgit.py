"""Stage 2: the masked video transformer's state, train step, evaluation and sampling.

One train step: the frozen C-ViViT (a copy of the tokenizer checkpoint kept in the state, so a
resumed run never depends on what later happens to the tokenizer's workdir) turns frames into
token ids; the text is encoded (`text_inputs`); MaskGIT masking with the cosine schedule masks
tokens (`masking`), the text is dropped 10% of the time, and cross-entropy is taken on the
masked tokens only (`losses`). Image examples are one-frame videos: only their first token
frame exists (the rest is neither attended to nor scored).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phenaki_jax import decoding
from phenaki_jax.checkpoint import CheckpointError
from phenaki_jax.config import ConfigError
from phenaki_jax.decoding import SamplingSettings
from phenaki_jax.models.cvivit import CViViT, float_to_frames, frames_to_float
from phenaki_jax.models.maskgit import MaskGIT
from phenaki_jax.stages import restore
from phenaki_jax.stages import state as state_lib
from phenaki_jax.stages.base import Stage
from phenaki_jax.stages.cvivit import CViViTStage
from phenaki_jax.stages.losses import masked_cross_entropy, token_cross_entropy
from phenaki_jax.stages.masking import context_token_frames, mask_tokens
from phenaki_jax.stages.text_inputs import TextInputs, t5_directory
from phenaki_jax.stages.text_inputs import fingerprint as text_fingerprint

Array = jax.Array
EVAL_SEED = 0x5EED


class MaskGITStage(Stage):
    """Builds and trains the masked transformer.

    `tokenizer` is the config of the frozen C-ViViT whose token ids the model learns: its
    parameters live in `state.aux["tokenizer"]` and frames are tokenized inside the step. With
    no tokenizer (phenaki-bench), batches carry token ids instead of frames. `text` says where
    text embeddings come from (`TextInputs`). `tokenizer_checkpoint` (workdir, step) is where
    a new training run takes the trained tokenizer from.
    """

    name = "maskgit"

    def __init__(self, config: ml_collections.ConfigDict,
                 tokenizer: ml_collections.ConfigDict | None, text: TextInputs,
                 tokenizer_checkpoint: tuple[str, int] | None = None) -> None:
        if not config.tokens.vocab_size or not all(config.tokens.grid):
            raise ConfigError("config.tokens.grid and config.tokens.vocab_size are unset (0); "
                              "take them from the tokenizer first (validation.with_tokens_of)")
        self.config = config
        self.model = MaskGIT.from_config(config)
        self.tx = state_lib.make_optimizer(config)
        self.grid = tuple(config.tokens.grid)
        self.tokens_shape = self.grid
        self.num_tokens = int(np.prod(self.grid))
        self.text = text
        self.tokenizer_config = tokenizer
        self.tokenizer_checkpoint = tokenizer_checkpoint
        self.tokenizer_model = None if tokenizer is None else CViViT.from_config(tokenizer)
        axes: dict[str, tuple[str, ...]] = {"is_image": ("batch",)}
        if tokenizer is None:
            axes["ids"] = ("batch", "time", "height", "width")
        else:
            axes["frames"] = ("batch", "time", "height", "width", "channels")
            if config.masking.get("give_context", False):
                axes["context_frames"] = ("batch",)
        self.batch_axes = {**axes, **text.batch_axes()}

    # -- host side ------------------------------------------------------------------------
    def host_batch(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The pipeline's batch (frames, is_image, text bytes, context_frames; the integers
        already int32) as the step's inputs; context_frames only with `masking.give_context`."""
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw["text"]]
        out = {"frames": raw["frames"], "is_image": raw["is_image"],
               **self.text.host_arrays(texts)}
        if "context_frames" in self.batch_axes:
            out["context_frames"] = raw["context_frames"]
        return out

    def example_batch(self, batch_size: int | None = None) -> dict[str, Array]:
        c = self.config
        b = c.batch_size if batch_size is None else batch_size
        r = c.data.resolution
        out: dict[str, Any] = {"is_image": jnp.zeros((b,), jnp.int32),
                               **self.text.example_arrays(b)}
        if self.tokenizer_model is None:
            out["ids"] = jnp.zeros((b, *self.grid), jnp.int32)
        else:
            out["frames"] = jnp.zeros((b, c.data.num_frames, r, r, 3), jnp.uint8)
        if "context_frames" in self.batch_axes:
            out["context_frames"] = jnp.zeros((b,), jnp.int32)
        return out

    def bench_batch(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random token ids over the grid and random text (the contract's bench inputs)."""
        c = self.config
        b = c.batch_size
        ids = rng.integers(0, c.tokens.vocab_size, (b, *self.grid)).astype(np.int32)
        return {"ids": ids, "is_image": np.zeros((b,), np.int32),
                **self.text.random_arrays(b, rng)}

    def init(self, rng: Array) -> state_lib.TrainState:
        """The initial state with logically boxed parameters. The frozen tokenizer and T5 are
        random here; `prepare_new_state` puts the real ones in before the first step."""
        ex = self.example_batch(1)
        ctx = jnp.zeros((1, self.config.text.max_length, self.config.text.embed_dim),
                        jnp.float32)
        params = {"transformer": self.model.init(
            jax.random.fold_in(rng, 0), ex.get("ids", jnp.zeros((1, *self.grid), jnp.int32)),
            ctx, ex["text_mask"], jnp.zeros((1,), bool))["params"]}
        text_params, aux = self.text.init(jax.random.fold_in(rng, 1))
        params.update(text_params)
        if self.tokenizer_model is not None:
            t = self.tokenizer_config
            x = frames_to_float(jnp.zeros((1, t.data.num_frames, t.data.resolution,
                                           t.data.resolution, 3), jnp.uint8))
            aux["tokenizer"] = self.tokenizer_model.init(jax.random.fold_in(rng, 2), x)
        return state_lib.initial_state(self.tx, params, self.config.ema_decay, aux=aux)

    def checkpoint_meta(self) -> dict[str, Any]:
        """The frozen tokenizer's config and origin, stored with every checkpoint, so that
        inference needs this run's workdir alone."""
        meta: dict[str, Any] = {}
        if self.tokenizer_config is not None:
            workdir, step = self.tokenizer_checkpoint or ("", -1)
            meta["tokenizer"] = {
                "config": json.loads(self.tokenizer_config.to_json_best_effort()),
                "workdir": workdir, "step": step}
        if self.text.frozen:
            meta["text_encoder"] = self._text_encoder
        return meta

    @functools.cached_property
    def _text_encoder(self) -> dict[str, str]:
        """The frozen T5's directory and fingerprint, read once (not at every checkpoint)."""
        return {"checkpoint": self.config.text.checkpoint,
                "fingerprint": text_fingerprint(t5_directory(self.config.text))}

    def detached_aux(self) -> tuple[str, ...]:
        return ("text",) if self.text.frozen else ()

    def attach(self, state: state_lib.TrainState, meta: dict[str, Any],
               state_shardings: Any) -> state_lib.TrainState:  # noqa: ANN401
        """Reloads the frozen T5 from `config.text.checkpoint`, which must be the one the
        checkpoint was trained with."""
        if not self.text.frozen:
            return state
        stored = meta.get("text_encoder", {}).get("fingerprint")
        current = self._text_encoder["fingerprint"]
        if stored and stored != current:
            raise CheckpointError(
                f"config.text.checkpoint={self.config.text.checkpoint} is not the T5 this "
                f"checkpoint was trained with (fingerprint {stored}, this one {current})")
        aux = dict(state.aux)
        aux["text"] = jax.device_put(self.text.load_frozen(), state_shardings.aux["text"])
        return state.replace(aux=aux)

    def prepare_new_state(self, state: state_lib.TrainState, mesh: Any,
                          state_shardings: Any) -> state_lib.TrainState:  # noqa: ANN401
        """Copies the trained tokenizer (and a frozen T5) into a freshly initialised state."""
        aux = dict(state.aux)
        if "tokenizer" in aux and self.tokenizer_checkpoint is not None:
            workdir, step = self.tokenizer_checkpoint
            tstage = CViViTStage(self.tokenizer_config)
            tstate = restore.restore_state(workdir, tstage, mesh, step)
            aux["tokenizer"] = {"params": tstage.inference_params(tstate), **tstate.model_state}
        if "text" in aux:
            aux["text"] = self.text.load_frozen()
        return state.replace(aux=jax.device_put(aux, state_shardings.aux))

    # -- training ---------------------------------------------------------------------------
    def token_ids(self, state: state_lib.TrainState, batch: dict[str, Array]) -> Array:
        """int32 [B, t, h, w]: given ids (bench) or the frozen tokenizer's ids of the frames."""
        if "ids" in batch:
            return batch["ids"]
        variables = jax.lax.stop_gradient(state.aux["tokenizer"])
        return self.tokenizer_model.apply(variables, frames_to_float(batch["frames"]),
                                          method="tokenize")

    def _logits(self, params: Any, state: state_lib.TrainState, batch: dict[str, Array],
                inputs: Array, drop: Array, valid: Array | None) -> Array:
        context, context_mask = self.text.encode(params, state.aux, batch)
        b = inputs.shape[0]
        return self.model.apply({"params": params["transformer"]},
                                inputs.reshape(b, *self.grid), context, context_mask,
                                drop, valid).reshape(b, self.num_tokens, -1)

    def _given_frames(self, batch: dict[str, Array]) -> Array | None:
        """Token frames given in every example (a continuation's context), or None."""
        if "context_frames" not in batch:
            return None
        return context_token_frames(batch["context_frames"],
                                    self.tokenizer_config.model.temporal_patch_size)

    def train_step(self, state: state_lib.TrainState, batch: dict[str, Array]
                   ) -> tuple[state_lib.TrainState, dict[str, Array]]:
        c = self.config
        rng = jax.random.fold_in(jax.random.key(c.seed), state.step)
        k_mask, k_drop = jax.random.split(rng)
        ids = self.token_ids(state, batch)
        b = ids.shape[0]
        flat = ids.reshape(b, self.num_tokens)
        masked, valid = mask_tokens(k_mask, self.grid, batch["is_image"],
                                    c.masking.prefix_fraction,
                                    c.masking.get("frame_fraction", 0.0),
                                    self._given_frames(batch))
        inputs = jnp.where(masked, self.model.mask_id, flat)
        drop = jax.random.uniform(k_drop, (b,)) < c.text.dropout
        image_weight = c.masking.get("image_weight", 1.0)
        weights = None if image_weight == 1.0 else jnp.where(
            batch["is_image"] > 0, image_weight, 1.0)

        def loss_fn(params: Any) -> tuple[Array, Array]:
            logits = self._logits(params, state, batch, inputs, drop, valid)
            loss, acc = masked_cross_entropy(logits, flat, masked,
                                             c.get("label_smoothing", 0.0), weights)
            return loss, acc

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state, grad_norm = state_lib.optimizer_update(self.tx, state, grads)
        new_state = state_lib.commit(state, c.ema_decay, loss, grad_norm, params, opt_state)
        metrics = {
            "loss": loss, "accuracy": acc,
            "masked_share": masked.sum() / jnp.maximum(valid.sum(), 1),
            **state_lib.step_metrics(c, state, new_state, grad_norm),
        }
        return new_state, metrics

    # -- evaluation -------------------------------------------------------------------------
    def eval_step(self, state: state_lib.TrainState, batch: dict[str, Array]
                  ) -> dict[str, Array]:
        """Masked loss with and without the text on the same masks (per-batch sums): the gap
        is what the text is worth; a model that ignores its prompt has none."""
        params = self.inference_params(state)
        ids = self.token_ids(state, batch)
        b = ids.shape[0]
        flat = ids.reshape(b, self.num_tokens)
        masked, valid = mask_tokens(jax.random.key(EVAL_SEED), self.grid, batch["is_image"],
                                    0.0, given_frames=self._given_frames(batch))
        inputs = jnp.where(masked, self.model.mask_id, flat)
        out, per_example = {}, {}
        for name, drop in (("cond", False), ("uncond", True)):
            logits = self._logits(params, state, batch, inputs, jnp.full((b,), drop), valid)
            ce, correct = token_cross_entropy(logits, flat)
            ce = ce * masked
            out[f"{name}_sum"] = ce.sum()
            out[f"{name}_correct"] = (correct * masked).sum()
            per_example[name] = ce.sum(1) / jnp.maximum(masked.sum(1), 1)
        # Paired per-example gains (same clip, same masks), for a standard error of the gain.
        gain = per_example["uncond"] - per_example["cond"]
        out["gain_sum"], out["gain_sq_sum"] = gain.sum(), jnp.square(gain).sum()
        out["examples"] = jnp.asarray(b, jnp.float32)
        out["masked"] = masked.sum().astype(jnp.float32)
        return out

    def finish_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        n = max(float(sums["masked"]), 1.0)
        cond, uncond = float(sums["cond_sum"]) / n, float(sums["uncond_sum"]) / n
        m = max(float(sums["examples"]), 2.0)
        mean = float(sums["gain_sum"]) / m
        var = max(float(sums["gain_sq_sum"]) / m - mean * mean, 0.0) * m / (m - 1)
        return {"eval_loss": cond, "eval_loss_uncond": uncond,
                "eval_text_gain": uncond - cond,
                "eval_text_gain_per_clip": mean,
                "eval_text_gain_stderr": math.sqrt(var / m),
                "eval_accuracy": float(sums["cond_correct"]) / n,
                "eval_accuracy_uncond": float(sums["uncond_correct"]) / n,
                "eval_perplexity": math.exp(min(cond, 50.0))}

    # -- sampling ---------------------------------------------------------------------------
    def text_logits_fn(self, state: state_lib.TrainState, batch: dict[str, Array]
                       ) -> decoding.LogitsFn:
        """The inference model under the batch's B texts, as decoding calls it: flat ids
        [k * B, N] (k copies of the batch, e.g. conditional then text dropped, or several
        samples of each example) -> logits [k * B, N, V]."""
        params = self.inference_params(state)
        context, context_mask = self.text.encode(params, state.aux, batch)
        b = context.shape[0]

        def logits_fn(tokens: Array, drop: Array) -> Array:
            rep = tokens.shape[0] // b
            return self.model.apply(
                {"params": params["transformer"]}, tokens.reshape(-1, *self.grid),
                jnp.concatenate([context] * rep), jnp.concatenate([context_mask] * rep),
                drop).reshape(tokens.shape[0], self.num_tokens, -1)

        return logits_fn

    def sample_ids(self, state: state_lib.TrainState, batch: dict[str, Array],
                   known_ids: Array, known: Array, rng: Array,
                   settings: SamplingSettings) -> Array:
        """Parallel decoding of [B, t, h, w] token ids under the batch's text; `known` tokens
        stay. `settings.time_bias` lowers the confidence of token frame j by j * time_bias
        (earlier frames first); `settings.refine_sweeps` revisits every token frame that many
        times afterwards (see `decoding.parallel_decode`). With `settings.candidates` = C > 1
        each example is sampled C times and the sample most likely at guidance scale
        `settings.candidate_guidance` kept (`decoding.best_of`); the first sample is the one
        C = 1 gives, the others draw from the example's key folded with 1 .. C-1, so an
        example still depends on its own key only."""
        logits_fn = self.text_logits_fn(state, batch)
        b, c = known_ids.shape[0], settings.candidates
        known_ids, known = known_ids.reshape(b, -1), known.reshape(b, -1)
        keys = rng
        if c > 1:
            keys = decoding.row_keys(rng, b)
            keys = jnp.concatenate([keys, *(jax.vmap(jax.random.fold_in, (0, None))(keys, i)
                                            for i in range(1, c))])
        out = decoding.parallel_decode(
            logits_fn, jnp.tile(known_ids, (c, 1)), jnp.tile(known, (c, 1)), keys,
            settings.num_steps, settings.guidance_scale, settings.temperature,
            self.model.mask_id,
            order_bias=-jnp.asarray(settings.time_bias, jnp.float32) * self._token_frame,
            choice_temperature=settings.choice_temperature,
            refine_sweeps=settings.refine_sweeps, frame_size=self.grid[1] * self.grid[2])
        if c > 1:
            out = decoding.best_of(logits_fn, out.reshape(c, b, -1), known, self.model.mask_id,
                                   settings.candidate_guidance)
        return out.reshape(b, *self.grid)

    @property
    def _token_frame(self) -> Array:
        """[N]: the token frame of each position of the flattened grid."""
        t, h, w = self.grid
        return jnp.repeat(jnp.arange(t, dtype=jnp.float32), h * w)

    def decode_frames(self, state: state_lib.TrainState, ids: Array) -> Array:
        """Token ids [B, t, h, w] -> uint8 frames [B, T, H, W, 3] with the frozen tokenizer."""
        return float_to_frames(self.tokenizer_model.apply(state.aux["tokenizer"], ids,
                                                          method="decode_ids"))

    def summary_images(self, state: state_lib.TrainState, batch: dict[str, Array]) -> Array:
        """uint8 [N, H, T*W, 3]: clips sampled from the first texts of the batch."""
        n = min(4, batch["is_image"].shape[0])
        small = {k: v[:n] for k, v in batch.items()}
        known = jnp.zeros((n, *self.grid), bool)
        ids = self.sample_ids(state, small, jnp.zeros((n, *self.grid), jnp.int32), known,
                              jax.random.key(EVAL_SEED),
                              SamplingSettings.from_config(self.config.sampling))
        frames = self.decode_frames(state, ids)
        b, t, h, w, ch = frames.shape
        return frames.transpose(0, 2, 1, 3, 4).reshape(b, h, t * w, ch)
