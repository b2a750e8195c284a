"""Stage 2: the masked video transformer's state, train step, evaluation and sampling.

One train step: the frozen C-ViViT (a copy of the tokenizer checkpoint kept in the state, so a
resumed run never depends on what later happens to the tokenizer's workdir) turns frames into
token ids; the text is encoded (a small T5 trained with the transformer, or a frozen T5, or a
precomputed phenaki-embed cache); MaskGIT masking with the cosine schedule masks tokens, the
text is dropped 10% of the time, and cross-entropy is taken on the masked tokens only. Image
examples are one-frame videos: only their first token frame exists (the rest is neither
attended to nor scored).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from phenaki_jax import config_lib
from phenaki_jax.models import text as text_lib
from phenaki_jax.models.maskgit import MaskGIT
from phenaki_jax.sample import decode
from phenaki_jax.train import checkpoint as ckpt_lib
from phenaki_jax.train import state as state_lib

Array = jax.Array
PURPOSES = ("train", "bench", "inference")
_EVAL_SEED = 0x5EED


def _positive_int(config: ml_collections.ConfigDict, field: str) -> None:
    node: Any = config
    for part in field.split("."):
        node = node[part]
    if not isinstance(node, int) or isinstance(node, bool) or node <= 0:
        raise config_lib.ConfigError(f"config.{field} must be a positive integer, got {node!r}")


def tokenizer_config(workdir: str) -> ml_collections.ConfigDict:
    """The config stored with the newest checkpoint of a tokenizer run (one-line errors)."""
    if not workdir:
        raise config_lib.ConfigError(
            "config.tokenizer_workdir is empty; set it to the workdir of a trained C-ViViT "
            "(--config.tokenizer_workdir=DIR)")
    if not os.path.isdir(workdir):
        raise config_lib.ConfigError(f"config.tokenizer_workdir={workdir} does not exist")
    _, tconfig = ckpt_lib.Checkpointer(workdir, read_only=True).latest_config()
    if tconfig.get("stage") != "cvivit":
        raise config_lib.ConfigError(
            f"config.tokenizer_workdir={workdir} holds a {tconfig.get('stage')!r} checkpoint, "
            "not a C-ViViT tokenizer")
    return tconfig


def check_tokenizer(config: ml_collections.ConfigDict, tconfig: ml_collections.ConfigDict,
                    where: str) -> None:
    """The transformer's token space must be exactly the tokenizer's."""
    from phenaki_jax.models.cvivit import token_grid

    codebook = tconfig.model.codebook_size
    if codebook != config.tokens.vocab_size:
        raise config_lib.ConfigError(
            f"config.tokens.vocab_size={config.tokens.vocab_size} does not equal the codebook "
            f"size {codebook} of the tokenizer in {where}")
    grid = list(token_grid(tconfig.data.num_frames, tconfig.data.resolution,
                           tconfig.model.patch_size, tconfig.model.temporal_patch_size))
    if grid != list(config.tokens.grid):
        raise config_lib.ConfigError(
            f"config.tokens.grid={list(config.tokens.grid)} does not equal the token grid "
            f"{grid} of the tokenizer in {where}")
    for f in ("resolution", "num_frames"):
        if tconfig.data[f] != config.data[f]:
            raise config_lib.ConfigError(
                f"config.data.{f}={config.data[f]} differs from the tokenizer's "
                f"{tconfig.data[f]} ({where})")


def validate(config: ml_collections.ConfigDict, purpose: str = "train") -> None:
    """Every maskgit-specific check that needs no compilation."""
    for section in ("model", "tokens", "text", "masking", "sampling"):
        if section not in config:
            raise config_lib.ConfigError(
                f"config.{section} is missing: config.stage='maskgit' needs a transformer "
                "config (configs/maskgit.py)")
    for f in ("num_layers", "width", "num_heads", "mlp_dim", "dtype", "remat"):
        if f not in config.model:
            raise config_lib.ConfigError(f"config.model.{f} is missing: config.stage='maskgit' "
                                         "needs a transformer config (configs/maskgit.py)")
    for f in ("model.width", "model.num_layers", "model.num_heads", "model.mlp_dim",
              "tokens.vocab_size", "text.max_length", "text.embed_dim", "sampling.num_steps"):
        _positive_int(config, f)
    m = config.model
    if m.width % m.num_heads:
        raise config_lib.ConfigError(
            f"config.model.num_heads={m.num_heads} does not divide config.model.width={m.width}")
    if m.dtype not in ("float32", "bfloat16"):
        raise config_lib.ConfigError(f"config.model.dtype must be float32 or bfloat16, "
                                     f"got {m.dtype!r}")
    grid = tuple(config.tokens.grid)
    if len(grid) != 3 or any(not isinstance(g, int) or g <= 0 for g in grid):
        raise config_lib.ConfigError(
            f"config.tokens.grid must be three positive integers [t, h, w], got {grid}")
    if config.tokens.vocab_size < 2:
        raise config_lib.ConfigError("config.tokens.vocab_size must be at least 2")
    if grid[0] != 1 + (config.data.num_frames - 1) // 2:
        raise config_lib.ConfigError(
            f"config.tokens.grid[0]={grid[0]} does not match config.data.num_frames="
            f"{config.data.num_frames} (1 + (T - 1) / 2 token frames)")
    if config.text.max_length < 2:
        raise config_lib.ConfigError("config.text.max_length must be >= 2 (text and EOS)")
    if not 0 <= config.text.dropout < 1:
        raise config_lib.ConfigError(f"config.text.dropout must be in [0, 1), "
                                     f"got {config.text.dropout}")
    if not 0 <= config.get("label_smoothing", 0.0) < 1:
        raise config_lib.ConfigError(f"config.label_smoothing must be in [0, 1), "
                                     f"got {config.label_smoothing}")
    if not 0 <= config.masking.prefix_fraction <= 1:
        raise config_lib.ConfigError("config.masking.prefix_fraction must be in [0, 1]")
    if not 0 <= config.masking.get("frame_fraction", 0.0) <= 1:
        raise config_lib.ConfigError("config.masking.frame_fraction must be in [0, 1]")
    if config.sampling.guidance_scale < 0 or config.sampling.temperature < 0:
        raise config_lib.ConfigError(
            "config.sampling.guidance_scale and config.sampling.temperature must be >= 0")
    if config.sampling.get("time_bias", 0.0) < 0:
        raise config_lib.ConfigError("config.sampling.time_bias must be >= 0")
    if (config.sampling.get("choice_temperature") or 0.0) < 0:
        raise config_lib.ConfigError("config.sampling.choice_temperature must be >= 0")
    if config.sampling.get("refine_sweeps", 0) < 0:
        raise config_lib.ConfigError("config.sampling.refine_sweeps must be >= 0")
    for f in ("image_fraction", "continuation_fraction"):
        if not 0 <= config.data[f] <= 1:
            raise config_lib.ConfigError(f"config.data.{f} must be in [0, 1]")
    enc = config.text.encoder
    if enc == "trainable":
        for f in ("text.num_layers", "text.num_heads", "text.mlp_dim"):
            _positive_int(config, f)
        if config.text.embed_dim % config.text.num_heads:
            raise config_lib.ConfigError(
                f"config.text.num_heads={config.text.num_heads} does not divide "
                f"config.text.embed_dim={config.text.embed_dim}")
    elif enc == "t5":
        if purpose != "bench":
            _check_t5(config)
    else:
        raise config_lib.ConfigError(
            f"config.text.encoder must be 'trainable' or 't5', got {enc!r}")
    if purpose == "train":
        check_tokenizer(config, tokenizer_config(config.tokenizer_workdir),
                        config.tokenizer_workdir)


def _check_t5(config: ml_collections.ConfigDict) -> None:
    t = config.text
    if not t.checkpoint:
        raise config_lib.ConfigError(
            "config.text.checkpoint is empty; text.encoder='t5' needs a Hugging Face or T5X "
            "checkpoint directory")
    if not os.path.isdir(t.checkpoint):
        raise config_lib.ConfigError(f"config.text.checkpoint={t.checkpoint} does not exist")
    if t.cache and not os.path.isfile(t.cache):
        raise config_lib.ConfigError(f"config.text.cache={t.cache} does not exist")
    if t.vocabulary and not os.path.isfile(t.vocabulary):
        raise config_lib.ConfigError(f"config.text.vocabulary={t.vocabulary} does not exist")
    hf_config = os.path.join(t.checkpoint, "config.json")
    if os.path.isfile(hf_config):
        import json

        with open(hf_config) as f:
            d_model = json.load(f).get("d_model")
        if d_model != t.embed_dim:
            raise config_lib.ConfigError(
                f"config.text.embed_dim={t.embed_dim} differs from the T5 width {d_model} in "
                f"{hf_config}")
        if not t.vocabulary and not os.path.isfile(os.path.join(t.checkpoint, "spiece.model")):
            raise config_lib.ConfigError(
                f"config.text.checkpoint={t.checkpoint} has no spiece.model; set "
                "config.text.vocabulary")
    elif not t.vocabulary:
        raise config_lib.ConfigError(
            "config.text.vocabulary must name the sentencepiece model of the T5X checkpoint in "
            f"{t.checkpoint}")


def context_token_frames(context_frames: Array, temporal_patch: int) -> Array:
    """int [B]: the token frames made only of the first `context_frames` frames of each clip
    (frame 0 is token frame 0 alone, then tubelets of `temporal_patch` frames); a tubelet
    that straddles the boundary is not one of them."""
    c = jnp.asarray(context_frames, jnp.int32)
    return jnp.where(c > 0, 1 + (c - 1) // temporal_patch, 0)


def mask_tokens(rng: Array, grid: tuple[int, int, int], is_image: Array,
                prefix_fraction: float, frame_fraction: float = 0.0,
                given_frames: Array | None = None) -> tuple[Array, Array]:
    """MaskGIT training masks for a batch.

    Args:
      rng: PRNG key.
      grid: (t, h, w) tokens per clip.
      is_image: int [B], 1 for an image (a one-frame video: only token frame 0 exists).
      prefix_fraction: share of videos whose first j token frames (j uniform in 1..t-1) stay
        unmasked, as the story decoder's known tokens do.
      frame_fraction: share of the other videos in which exactly one token frame (uniform)
        is masked, wholly, and every other frame is given, as `decode.refine_frames` asks the
        model to predict (static; 0 draws no extra random numbers).
      given_frames: int [B] or None: this many leading token frames of each example are
        always given, never masked: a continuation clip's context, which its caption does not
        describe (`context_token_frames`). The random draws are the same with or without it.

    Returns:
      (masked, valid), bool [B, N] with N = t*h*w: `masked` tokens are replaced by the mask
      token and scored; `valid` tokens exist. A cosine-distributed share cos(pi/2 u), u ~ U(0,1),
      of each example's eligible tokens is masked, at least one.
    """
    t, h, w = grid
    n, s = t * h * w, h * w
    b = is_image.shape[0]
    k_ratio, k_scores, k_prefix, k_len = jax.random.split(rng, 4)
    idx = jnp.arange(n)[None, :]
    image = is_image.reshape(b, 1) > 0
    valid = jnp.where(image, idx < s, True)
    use_prefix = (jax.random.uniform(k_prefix, (b, 1)) < prefix_fraction) & ~image
    prefix_len = jax.random.randint(k_len, (b, 1), 1, max(t, 2)) * s
    given_len = jnp.where(use_prefix, prefix_len, 0)
    if given_frames is not None:
        given_len = jnp.maximum(given_len, given_frames.reshape(b, 1) * s)
    eligible = valid & ~(idx < given_len)
    ratio = decode.mask_ratio(jax.random.uniform(k_ratio, (b,)))
    if frame_fraction:
        k_frame, k_which = jax.random.split(jax.random.fold_in(rng, 1))
        use_frame = ((jax.random.uniform(k_frame, (b, 1)) < frame_fraction) & ~image
                     & ~use_prefix)
        if given_frames is not None:
            use_frame &= given_frames.reshape(b, 1) == 0
        which = jax.random.randint(k_which, (b, 1), 0, t)
        eligible = jnp.where(use_frame, idx // s == which, eligible)
        ratio = jnp.where(use_frame[:, 0], 1.0, ratio)
    num_eligible = eligible.sum(1)
    num_mask = jnp.clip(jnp.ceil(ratio * num_eligible).astype(jnp.int32), 1, num_eligible)
    scores = jnp.where(eligible, jax.random.uniform(k_scores, (b, n)), 2.0)
    cutoff = jnp.take_along_axis(jnp.sort(scores, axis=1), (num_mask - 1)[:, None], axis=1)
    return eligible & (scores <= cutoff), valid


def token_cross_entropy(logits: Array, ids: Array, label_smoothing: float = 0.0
                        ) -> tuple[Array, Array]:
    """Per-token cross-entropy and correctness [B, N] of logits [B, N, V] against ids [B, N];
    with `label_smoothing` e the target is (1 - e) on the id plus e spread evenly."""
    logits = logits.astype(jnp.float32)
    # One max and one exp-sum over the vocabulary serve both the loss and the accuracy (a
    # separate argmax was a measurable share of the small transformer's step on CPU).
    top = jax.lax.stop_gradient(logits.max(-1))
    lse = top + jnp.log(jnp.exp(logits - top[..., None]).sum(-1))
    label = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
    target = label
    if label_smoothing:
        target = (1.0 - label_smoothing) * label + label_smoothing * logits.mean(-1)
    return lse - target, (label >= top).astype(jnp.float32)


def masked_cross_entropy(logits: Array, ids: Array, masked: Array,
                         label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy over the masked tokens only. logits [B, N, V]."""
    ce, correct = token_cross_entropy(logits, ids, label_smoothing)
    weights = masked.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    return (ce * weights).sum() / count, (correct * weights).sum() / count


class MaskGITStage:
    """Builds and trains the masked transformer; the trainer drives it through this interface.

    `purpose`: "train" (frames are tokenized by the frozen tokenizer inside the step),
    "bench" (random token ids and random text embeddings; no checkpoint is read) or
    "inference" (the state's structure only, for the story decoder).
    """

    name = "maskgit"

    def __init__(self, config: ml_collections.ConfigDict, purpose: str = "train",
                 tokenizer: ml_collections.ConfigDict | None = None) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}")
        self.config = config
        self.purpose = purpose
        self.model = MaskGIT.from_config(config)
        self.tx = state_lib.make_optimizer(config)
        self.grid = tuple(config.tokens.grid)
        self.tokens_shape = self.grid
        self.num_tokens = int(np.prod(self.grid))
        self.encoder = config.text.encoder
        # Where text embeddings come from: the trainable encoder (params), a frozen T5 (aux),
        # or given embeddings (a phenaki-embed cache in training, random ones in bench).
        if self.encoder == "trainable":
            self.text_source = "trainable"
        elif purpose == "bench" or (purpose == "train" and config.text.cache):
            self.text_source = "embeddings"
        else:
            self.text_source = "frozen"
        self.text_model = None
        self.text_tokenizer: Any = None
        if self.encoder == "trainable":
            t = config.text
            self.text_tokenizer = text_lib.ByteTokenizer()
            # 259 byte ids, padded to 384 rows so the embedding splits over a model axis.
            vocab = -(-self.text_tokenizer.vocab_size // 128) * 128
            self.text_model = text_lib.T5Encoder(text_lib.trainable_t5_config(
                t.embed_dim, t.num_layers, t.num_heads, t.mlp_dim, vocab_size=vocab))
        elif purpose != "bench":
            self._t5_config, self._t5_vocab = self._t5_files()
            self.text_model = text_lib.T5Encoder(self._t5_config)
            self.text_tokenizer = text_lib.SentencePieceTokenizer(self._t5_vocab)
        self._cache: tuple[dict[str, int], np.ndarray, np.ndarray] | None = None
        if self.text_source == "embeddings" and purpose == "train":
            self._cache = self._load_cache(config.text.cache)

        self.tokenizer_model = None
        if purpose != "bench":
            from phenaki_jax.models.cvivit import CViViT

            self.tokenizer_config = tokenizer or tokenizer_config(config.tokenizer_workdir)
            self.tokenizer_model = CViViT.from_config(self.tokenizer_config)
        self.batch_axes = self._batch_axes()

    # -- text ------------------------------------------------------------------------------
    def _t5_files(self) -> tuple[Any, str]:
        t = self.config.text
        hf_config = os.path.join(t.checkpoint, "config.json")
        if os.path.isfile(hf_config):
            import json

            with open(hf_config) as f:
                cfg = text_lib.T5Config.from_hf_dict(json.load(f))
        else:  # a T5X checkpoint carries no config: its sizes come from the arrays
            cfg, _ = text_lib.load_t5(t.checkpoint)
        vocab = t.vocabulary or os.path.join(t.checkpoint, "spiece.model")
        return cfg, vocab

    def _load_cache(self, path: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        with np.load(path) as f:
            missing = [k for k in ("prompts", "embeddings", "mask") if k not in f]
            if missing:
                raise config_lib.ConfigError(
                    f"config.text.cache={path} lacks {missing[0]!r}; write it with phenaki-embed")
            prompts = [str(p) for p in f["prompts"]]
            emb, mask = f["embeddings"].astype(np.float32), f["mask"].astype(np.int32)
        if emb.shape[-1] != self.config.text.embed_dim:
            raise config_lib.ConfigError(
                f"config.text.cache={path} holds embeddings of width {emb.shape[-1]}, but "
                f"config.text.embed_dim={self.config.text.embed_dim}")
        length = self.config.text.max_length
        if emb.shape[1] < length:
            pad = length - emb.shape[1]
            emb = np.pad(emb, ((0, 0), (0, pad), (0, 0)))
            mask = np.pad(mask, ((0, 0), (0, pad)))
        return {p: i for i, p in enumerate(prompts)}, emb[:, :length], mask[:, :length]

    def tokenize_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Host side: ids, mask int32 [N, text.max_length]; over-long texts are truncated."""
        ids, mask, truncated = self.text_tokenizer.encode_batch(texts, self.config.text.max_length)
        if truncated:
            logging.warning("%d text(s) longer than config.text.max_length=%d were truncated, "
                            "e.g. %r", len(truncated), self.config.text.max_length,
                            texts[truncated[0]][:80])
        return ids, mask

    def host_batch(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Turns the pipeline's batch (frames, is_image, text bytes, context_frames; the
        integers already int32, `pipeline.host_batches`) into the step's inputs;
        context_frames is kept only with `masking.give_context`."""
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw["text"]]
        out = {"frames": raw["frames"], "is_image": raw["is_image"]}
        if "context_frames" in self.batch_axes:
            out["context_frames"] = raw["context_frames"]
        if self.text_source == "embeddings":
            assert self._cache is not None
            index, emb, mask = self._cache
            rows = []
            for t in texts:
                if t not in index:
                    raise config_lib.ConfigError(
                        f"text {t!r} is not in config.text.cache={self.config.text.cache}; "
                        "embed every caption of the data set with phenaki-embed")
                rows.append(index[t])
            out["text_embeddings"], out["text_mask"] = emb[rows], mask[rows]
        else:
            out["text_ids"], out["text_mask"] = self.tokenize_text(texts)
        return out

    def _batch_axes(self) -> dict[str, tuple[str, ...]]:
        axes: dict[str, tuple[str, ...]] = {"is_image": ("batch",),
                                            "text_mask": ("batch", "text_length")}
        if self.purpose == "bench":
            axes["ids"] = ("batch", "time", "height", "width")
        else:
            axes["frames"] = ("batch", "time", "height", "width", "channels")
            if self.config.masking.get("give_context", False):
                axes["context_frames"] = ("batch",)
        if self.text_source == "embeddings":
            axes["text_embeddings"] = ("batch", "text_length", "text_embed")
        else:
            axes["text_ids"] = ("batch", "text_length")
        return axes

    def encode_text(self, state: state_lib.TrainState, batch: dict[str, Array],
                    params: Any = None) -> tuple[Array, Array]:
        """(context [B, L, D], mask [B, L]) from whichever text input the batch carries."""
        if "text_embeddings" in batch:
            return batch["text_embeddings"], batch["text_mask"]
        if self.text_source == "trainable":
            text_params = (state.params if params is None else params)["text"]
        else:
            text_params = jax.lax.stop_gradient(state.aux["text"])
        emb = self.text_model.apply({"params": text_params}, batch["text_ids"],
                                    batch["text_mask"])
        return emb, batch["text_mask"]

    # -- shapes -----------------------------------------------------------------------------
    def example_batch(self, batch_size: int | None = None) -> dict[str, Array]:
        c = self.config
        b = c.batch_size if batch_size is None else batch_size
        r, length = c.data.resolution, c.text.max_length
        out: dict[str, Any] = {"is_image": jnp.zeros((b,), jnp.int32),
                               "text_mask": jnp.ones((b, length), jnp.int32)}
        if self.purpose == "bench":
            out["ids"] = jnp.zeros((b, *self.grid), jnp.int32)
        else:
            out["frames"] = jnp.zeros((b, c.data.num_frames, r, r, 3), jnp.uint8)
        if "context_frames" in self.batch_axes:
            out["context_frames"] = jnp.zeros((b,), jnp.int32)
        if self.text_source == "embeddings":
            out["text_embeddings"] = jnp.zeros((b, length, c.text.embed_dim), jnp.float32)
        else:
            out["text_ids"] = jnp.ones((b, length), jnp.int32)
        return out

    def bench_batch(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random token ids over the grid and random text (the contract's bench inputs)."""
        c = self.config
        b, length = c.batch_size, c.text.max_length
        out = {"ids": rng.integers(0, c.tokens.vocab_size, (b, *self.grid)).astype(np.int32),
               "is_image": np.zeros((b,), np.int32),
               "text_mask": np.ones((b, length), np.int32)}
        if self.text_source == "embeddings":
            out["text_embeddings"] = rng.standard_normal((b, length, c.text.embed_dim)).astype(
                np.float32)
        else:
            out["text_ids"] = rng.integers(3, 259, (b, length)).astype(np.int32)
        return out

    def init(self, rng: Array) -> state_lib.TrainState:
        """The initial state with logically boxed parameters. The frozen tokenizer and T5 are
        random here; `prepare_new_state` puts the real ones in before the first step."""
        c = self.config
        ex = self.example_batch(1)
        ctx = jnp.zeros((1, c.text.max_length, c.text.embed_dim), jnp.float32)
        params = {"transformer": self.model.init(
            jax.random.fold_in(rng, 0), ex.get("ids", jnp.zeros((1, *self.grid), jnp.int32)),
            ctx, ex["text_mask"], jnp.zeros((1,), bool))["params"]}
        aux: dict[str, Any] = {}
        text_ids = jnp.ones((1, c.text.max_length), jnp.int32)
        if self.text_source == "trainable":
            params["text"] = self.text_model.init(jax.random.fold_in(rng, 1), text_ids,
                                                  ex["text_mask"])["params"]
        elif self.text_model is not None:
            aux["text"] = self.text_model.init(jax.random.fold_in(rng, 1), text_ids,
                                               ex["text_mask"])["params"]
        if self.tokenizer_model is not None:
            from phenaki_jax.models.cvivit import frames_to_float

            t = self.tokenizer_config
            x = frames_to_float(jnp.zeros((1, t.data.num_frames, t.data.resolution,
                                           t.data.resolution, 3), jnp.uint8))
            aux["tokenizer"] = self.tokenizer_model.init(jax.random.fold_in(rng, 2), x)
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
            ema_params=params if c.ema_decay > 0 else {}, model_state={}, aux=aux,
            nonfinite_streak=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32))

    def prepare_new_state(self, state: state_lib.TrainState, mesh: Any,
                          state_shardings: Any) -> state_lib.TrainState:
        """Copies the trained tokenizer (and a frozen T5) into a freshly initialised state."""
        aux = dict(state.aux)
        if "tokenizer" in aux:
            from phenaki_jax.train import trainer

            _, tstage, tstate = trainer.restore_for_inference(
                self.config.tokenizer_workdir, mesh, expected_stage="cvivit")
            aux["tokenizer"] = {"params": tstage.inference_params(tstate),
                                **tstate.model_state}
        if "text" in aux:
            _, t5_params = text_lib.load_t5(self.config.text.checkpoint)
            aux["text"] = t5_params
        return state.replace(aux=jax.device_put(aux, state_shardings.aux))

    # -- training ---------------------------------------------------------------------------
    def token_ids(self, state: state_lib.TrainState, batch: dict[str, Array]) -> Array:
        """int32 [B, t, h, w]: given ids (bench) or the frozen tokenizer's ids of the frames."""
        if "ids" in batch:
            return batch["ids"]
        from phenaki_jax.models.cvivit import frames_to_float

        variables = jax.lax.stop_gradient(state.aux["tokenizer"])
        return self.tokenizer_model.apply(variables, frames_to_float(batch["frames"]),
                                          method="tokenize")

    def _logits(self, params: Any, state: state_lib.TrainState, batch: dict[str, Array],
                inputs: Array, drop: Array, valid: Array | None) -> Array:
        context, context_mask = self.encode_text(state, batch, params)
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

        def loss_fn(params: Any) -> tuple[Array, Array]:
            logits = self._logits(params, state, batch, inputs, drop, valid)
            loss, acc = masked_cross_entropy(logits, flat, masked,
                                             c.get("label_smoothing", 0.0))
            return loss, acc

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if c.ema_decay > 0:
            ema = state_lib.ema_update(state.ema_params, params, c.ema_decay)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & state_lib.all_finite(params)
        candidate = state.replace(params=params, opt_state=opt_state, ema_params=ema)
        new_state = state_lib.select_tree(ok, candidate, state)
        new_state = new_state.replace(
            step=state.step + 1,
            nonfinite_streak=jnp.where(ok, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32))
        metrics = {
            "loss": loss, "accuracy": acc, "grad_norm": grad_norm,
            "masked_share": masked.sum() / jnp.maximum(valid.sum(), 1),
            "learning_rate": state_lib.learning_rate_schedule(c)(state.step),
            "nonfinite_steps": new_state.nonfinite_total.astype(jnp.float32),
            "nonfinite_streak": new_state.nonfinite_streak.astype(jnp.float32),
        }
        return new_state, metrics

    # -- evaluation -------------------------------------------------------------------------
    def inference_params(self, state: state_lib.TrainState) -> Any:
        return state.ema_params if self.config.ema_decay > 0 else state.params

    def eval_step(self, state: state_lib.TrainState, batch: dict[str, Array]
                  ) -> dict[str, Array]:
        """Masked loss with and without the text on the same masks (per-batch sums): the gap
        is what the text is worth; a model that ignores its prompt has none."""
        params = self.inference_params(state)
        ids = self.token_ids(state, batch)
        b = ids.shape[0]
        flat = ids.reshape(b, self.num_tokens)
        masked, valid = mask_tokens(jax.random.key(_EVAL_SEED), self.grid, batch["is_image"],
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
    def sample_ids(self, state: state_lib.TrainState, batch: dict[str, Array],
                   known_ids: Array, known: Array, rng: Array, num_steps: int,
                   guidance_scale: Array | float, temperature: Array | float,
                   time_bias: Array | float = 0.0,
                   choice_temperature: Array | float | None = None,
                   refine_sweeps: int = 0) -> Array:
        """Parallel decoding of [B, t, h, w] token ids under the batch's text; `time_bias`
        lowers the confidence of token frame j by j * time_bias (earlier frames first),
        `choice_temperature` scales the noise on the confidences (None: `temperature`), and
        `refine_sweeps` (static) revisits every token frame that many times afterwards."""
        params = self.inference_params(state)
        context, context_mask = self.encode_text(state, batch, params)
        b = known_ids.shape[0]

        def logits_fn(tokens: Array, drop: Array) -> Array:
            rep = tokens.shape[0] // b
            return self.model.apply(
                {"params": params["transformer"]}, tokens.reshape(-1, *self.grid),
                jnp.concatenate([context] * rep), jnp.concatenate([context_mask] * rep),
                drop).reshape(tokens.shape[0], self.num_tokens, -1)

        out = decode.parallel_decode(
            logits_fn, known_ids.reshape(b, -1), known.reshape(b, -1), rng, num_steps,
            guidance_scale, temperature, self.model.mask_id,
            order_bias=-jnp.asarray(time_bias, jnp.float32) * self._token_frame,
            choice_temperature=choice_temperature, refine_sweeps=refine_sweeps,
            frame_size=self.grid[1] * self.grid[2])
        return out.reshape(b, *self.grid)

    @property
    def _token_frame(self) -> Array:
        """[N]: the token frame of each position of the flattened grid."""
        t, h, w = self.grid
        return jnp.repeat(jnp.arange(t, dtype=jnp.float32), h * w)

    def decode_frames(self, state: state_lib.TrainState, ids: Array) -> Array:
        """Token ids [B, t, h, w] -> uint8 frames [B, T, H, W, 3] with the frozen tokenizer."""
        from phenaki_jax.models.cvivit import float_to_frames

        return float_to_frames(self.tokenizer_model.apply(state.aux["tokenizer"], ids,
                                                          method="decode_ids"))

    def summary_images(self, state: state_lib.TrainState, batch: dict[str, Array]) -> Array:
        """uint8 [N, H, T*W, 3]: clips sampled from the first texts of the batch."""
        c = self.config
        n = min(4, batch["is_image"].shape[0])
        small = {k: v[:n] for k, v in batch.items()}
        known = jnp.zeros((n, *self.grid), bool)
        ids = self.sample_ids(state, small, jnp.zeros((n, *self.grid), jnp.int32), known,
                              jax.random.key(_EVAL_SEED), c.sampling.num_steps,
                              c.sampling.guidance_scale, c.sampling.temperature,
                              c.sampling.get("time_bias", 0.0),
                              c.sampling.get("choice_temperature"),
                              c.sampling.get("refine_sweeps", 0))
        frames = self.decode_frames(state, ids)
        b, t, h, w, ch = frames.shape
        return frames.transpose(0, 2, 1, 3, 4).reshape(b, h, t * w, ch)

    def bench_sample(self, state: state_lib.TrainState, mesh: Any, repeats: int
                     ) -> dict[str, float]:
        """Median seconds to sample one batch of clips (all decoding steps), after compiling."""
        import statistics
        import time

        from phenaki_jax import sharding

        c = self.config
        batch = sharding.global_batch(mesh, self.bench_batch(np.random.default_rng(1)))
        b = c.batch_size
        known = jnp.zeros((b, *self.grid), bool)

        @jax.jit
        def run(st: Any, bt: Any, key: Array) -> Array:
            return self.sample_ids(st, bt, jnp.zeros((b, *self.grid), jnp.int32), known, key,
                                   c.sampling.num_steps, c.sampling.guidance_scale,
                                   c.sampling.temperature, c.sampling.get("time_bias", 0.0),
                                   c.sampling.get("choice_temperature"),
                                   c.sampling.get("refine_sweeps", 0))

        t0 = time.perf_counter()
        compiled = run.lower(state, batch, jax.random.key(0)).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(state, batch, jax.random.key(0)))
        times = []
        for i in range(max(repeats, 1)):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, batch, jax.random.key(i + 1)))
            times.append(time.perf_counter() - t0)
        return {"sample_s": statistics.median(times), "sample_compile_s": compile_s,
                "sample_steps": c.sampling.num_steps}
