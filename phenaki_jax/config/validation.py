"""The one place where configs are checked: every field a user may change, before anything
compiles. Nothing here reads a file: checks that need one (a tokenizer checkpoint, a T5
directory) happen where the file is opened, and `check_tokenizer` then compares the configs.

A failure raises `ConfigError` whose message names the field (`config.model.width=...`).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from phenaki_jax.config import ConfigError
from phenaki_jax.config.parsing import STAGES

Config = ml_collections.ConfigDict


def get_field(config: Config, field: str) -> Any:  # noqa: ANN401 - any config value
    """The value at a dotted path (`model.width`)."""
    node: Any = config
    for part in field.split("."):
        node = node[part]
    return node


def _is_int(value: Any) -> bool:  # noqa: ANN401
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:  # noqa: ANN401
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(config: Config, *fields: str) -> None:
    for field in fields:
        value = get_field(config, field)
        if not _is_number(value) or value <= 0:
            raise ConfigError(f"config.{field} must be a positive number, got {value!r}")


def positive_int(config: Config, *fields: str) -> None:
    for field in fields:
        value = get_field(config, field)
        if not _is_int(value) or value <= 0:
            raise ConfigError(f"config.{field} must be a positive integer, got {value!r}")


def non_negative(config: Config, *fields: str) -> None:
    for field in fields:
        value = get_field(config, field)
        if not _is_number(value) or value < 0:
            raise ConfigError(f"config.{field} must be >= 0, got {value!r}")


def in_range(config: Config, field: str, low: float, high: float,
             high_open: bool = False) -> None:
    """`low <= value <= high` (`< high` when `high_open`); a missing field counts as `low`."""
    *parents, leaf = field.split(".")
    node = get_field(config, ".".join(parents)) if parents else config
    value = node.get(leaf, low)
    ok = _is_number(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"config.{field} must be in [{low:g}, {high:g}{bracket}, got {value!r}")


MESH_AXES = ("data", "fsdp", "model")


def mesh_shape(config: Config, num_devices: int) -> dict[str, int]:
    """Resolves `config.mesh` (`data`, `fsdp`, `model`; one may be -1, taking the devices the
    others leave; a missing axis is 1) against the device count."""
    sizes = {axis: 1 for axis in MESH_AXES}
    for k, v in config.mesh.items():
        if k not in MESH_AXES:
            raise ConfigError(f"config.mesh.{k} is not a mesh axis (axes: {', '.join(MESH_AXES)})")
        sizes[k] = v
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {sizes}")
    for k, v in sizes.items():
        if v != -1 and (not _is_int(v) or v < 1):
            raise ConfigError(f"config.mesh.{k} must be a positive integer or -1, got {v!r}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh {sizes} does not divide the {num_devices} available devices")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"config.mesh {sizes} needs {fixed} devices but {num_devices} are available")
    return sizes


def validate(config: Config, num_devices: int | None = None,
             tokenizer: Config | None = None, training: bool = False) -> None:
    """Every check that needs neither a file nor a compilation.

    Args:
      config: a config of either stage.
      num_devices: when given, the mesh and the batch are checked against it.
      tokenizer: the config of the tokenizer a transformer works with; when given, its token
        space must be the transformer's (`check_tokenizer`).
      training: a transformer that trains must name its tokenizer (`tokenizer_workdir`).
    """
    _validate_common(config)
    if config.stage == "cvivit":
        _validate_cvivit(config)
    else:
        _validate_maskgit(config)
        if training and not config.tokenizer_workdir:
            raise ConfigError(
                "config.tokenizer_workdir is empty; set it to the workdir of a trained C-ViViT "
                "(--config.tokenizer_workdir=DIR)")
        if tokenizer is not None:
            check_tokenizer(config, tokenizer, config.get("tokenizer_workdir") or "the checkpoint")
    if num_devices is not None:
        _validate_mesh(config, num_devices)


def _validate_common(config: Config) -> None:
    if config.get("stage") not in STAGES:
        raise ConfigError(f"config.stage must be one of {STAGES}, got {config.get('stage')!r}")
    positive(config, "learning_rate")
    positive_int(config, "batch_size", "total_steps", "checkpoint_every_steps",
                 "log_every_steps", "keep_checkpoints", "max_consecutive_nonfinite",
                 "data.resolution", "data.num_frames")
    non_negative(config, "weight_decay", "grad_clip_norm", "end_learning_rate_factor")
    for f in ("warmup_steps", "eval_every_steps", "eval_batches", "seed"):
        value = get_field(config, f)
        if not _is_int(value) or (f != "seed" and value < 0):
            raise ConfigError(f"config.{f} must be an integer"
                              f"{'' if f == 'seed' else ' >= 0'}, got {value!r}")
    in_range(config, "ema_decay", 0, 1, high_open=True)
    in_range(config, "adam_b1", 0, 1, high_open=True)
    in_range(config, "adam_b2", 0, 1, high_open=True)
    if (config.data.num_frames - 1) % 2:
        raise ConfigError(
            f"config.data.num_frames must be 1 + 2k (first frame alone, then 2-frame tubelets), "
            f"got {config.data.num_frames}")
    if not isinstance(config.data.name, str) or not config.data.name:
        raise ConfigError("config.data.name must name a data set: a seqio task or mixture, "
                          "prepared:DIR or jsonl:...")


def _validate_mesh(config: Config, num_devices: int) -> None:
    sizes = mesh_shape(config, num_devices)
    # The batch splits over data x fsdp; parameters split their `embed` dimension over fsdp
    # and their `mlp`, `heads` and `vocab` dimensions over model.
    shards = sizes["data"] * sizes["fsdp"]
    split = f"the mesh's data x fsdp axes ({sizes['data']} x {sizes['fsdp']} devices)"
    if config.batch_size % shards:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by {split}")
    images = config.data.get("image_batch_size", 0)
    if config.stage == "cvivit" and images % shards:
        raise ConfigError(f"config.data.image_batch_size={images} is not divisible by {split}")
    widths = ["model.width"] + (["text.embed_dim"] if config.stage == "maskgit" else [])
    for field in widths:
        if get_field(config, field) % sizes["fsdp"]:
            raise ConfigError(f"config.{field}={get_field(config, field)} is not divisible by "
                              f"the mesh's fsdp axis ({sizes['fsdp']}), over which it is split")
    if config.stage == "maskgit" and config.tokens.vocab_size % sizes["model"]:
        raise ConfigError(
            f"config.tokens.vocab_size={config.tokens.vocab_size} is not divisible by the "
            f"mesh's model axis ({sizes['model']}), over which the logits are split")


def validate_cvivit_model(model: Config, resolution: int, num_frames: int) -> None:
    """Checks a C-ViViT model config against the clip size it will tokenize."""
    for f in ("width", "spatial_layers", "temporal_layers", "num_heads", "mlp_dim",
              "patch_size", "temporal_patch_size", "codebook_size", "code_dim"):
        if not _is_int(model[f]) or model[f] <= 0:
            raise ConfigError(f"config.model.{f} must be a positive integer, got {model[f]!r}")
    if resolution % model.patch_size:
        raise ConfigError(f"config.model.patch_size={model.patch_size} does not divide "
                          f"config.data.resolution={resolution}")
    if (num_frames - 1) % model.temporal_patch_size:
        raise ConfigError(
            f"config.model.temporal_patch_size={model.temporal_patch_size} does not divide "
            f"config.data.num_frames - 1 = {num_frames - 1}")
    if model.width % model.num_heads:
        raise ConfigError(f"config.model.num_heads={model.num_heads} does not divide "
                          f"config.model.width={model.width}")
    if model.code_dim > model.width:
        raise ConfigError(
            f"config.model.code_dim={model.code_dim} must not exceed config.model.width="
            f"{model.width} (codes are a low-dimensional factorization of the encoder output)")
    if model.codebook_size < 2:
        raise ConfigError("config.model.codebook_size must be at least 2")
    window = model.get("encoder_window", -1)
    if not _is_int(window) or window < -1:
        raise ConfigError(f"config.model.encoder_window must be -1 (global attention) or a "
                          f"radius >= 0, got {window!r}")
    channels = model.get("pixel_head_channels", 0)
    if not _is_int(channels) or channels < 0:
        raise ConfigError(f"config.model.pixel_head_channels must be 0 (no convolution) or a "
                          f"positive integer, got {channels!r}")
    if not isinstance(model.get("temporal_residual", False), bool):
        raise ConfigError(f"config.model.temporal_residual must be True or False, got "
                          f"{model.temporal_residual!r}")
    _dtype(model)


# What a rematerialised block keeps from its forward pass for the backward (jax's
# checkpoint policies): `full` keeps only the block's input and recomputes everything,
# `save_dots` keeps every matmul output, `save_dots_no_batch` those without a batch dimension
# (the weight-like ones), `none` keeps everything (no remat).
REMAT_POLICIES = ("none", "full", "save_dots", "save_dots_no_batch")
# Attention kernels and the platforms they run on (`layers.fused_attention`).
ATTENTION_IMPLEMENTATIONS = {"xla": None, "cudnn": "gpu", "splash": "tpu"}


def _dtype(model: Config, section: str = "model") -> None:
    if model.get("dtype", "float32") not in ("float32", "bfloat16"):
        raise ConfigError(f"config.{section}.dtype must be float32 or bfloat16, got "
                          f"{model.dtype!r}")
    remat = model.get("remat", "none")
    if not isinstance(remat, bool) and remat not in REMAT_POLICIES:
        raise ConfigError(f"config.{section}.remat must be one of {', '.join(REMAT_POLICIES)}, "
                          f"got {remat!r}")


# Random symmetries, shifts and zooms of the tokenizer's training clips (`stages.augment`).
AUGMENT_OPS = ("flip", "dihedral", "reverse", "channels", "shift", "zoom")


def augment_ops(spec: str) -> tuple[str, ...]:
    """`config.data.augment` -> its operations: 'flip,reverse' -> ('flip', 'reverse'), '' ->
    (); an unknown or repeated name raises a ConfigError naming the field."""
    ops = tuple(s.strip() for s in str(spec).split(",") if s.strip())
    if any(o not in AUGMENT_OPS for o in ops) or len(set(ops)) != len(ops):
        raise ConfigError(f"config.data.augment={spec!r} must be a comma-separated subset of "
                          f"{', '.join(AUGMENT_OPS)}, each at most once")
    return ops


def _validate_cvivit(config: Config) -> None:
    validate_cvivit_model(config.model, config.data.resolution, config.data.num_frames)
    augment_ops(config.data.get("augment", ""))
    q, loss = config.quantizer, config.loss
    in_range(config, "quantizer.usage_decay", 0, 1, high_open=True)
    non_negative(config, *(f"quantizer.{f}" for f in (
        "commitment_weight", "dead_threshold", "restart_every_steps")))
    if not 0 < q.get("restart_stop_fraction", 1.0) <= 1:
        raise ConfigError(f"config.quantizer.restart_stop_fraction must be in (0, 1], got "
                          f"{q.get('restart_stop_fraction')!r}")
    non_negative(config, *(f"loss.{f}" for f in (
        "l2_weight", "vq_weight", "perceptual_weight", "adversarial_weight", "lecam_weight",
        "adversarial_start_step")))
    video_perceptual = loss.get("video_perceptual_weight", 0.0)
    if not isinstance(video_perceptual, (int, float)) or video_perceptual < 0:
        raise ConfigError(f"config.loss.video_perceptual_weight must be >= 0, got "
                          f"{video_perceptual!r}")
    if video_perceptual and config.data.num_frames < 9:
        raise ConfigError(f"config.loss.video_perceptual_weight > 0 needs clips of at least 9 "
                          f"frames (I3D's pooling), got config.data.num_frames="
                          f"{config.data.num_frames}")
    images = config.data.get("image_batch_size", 0)
    if not _is_int(images) or images < 0:
        raise ConfigError(
            f"config.data.image_batch_size must be an integer >= 0, got {images!r}")
    if images and not config.data.get("image_name"):
        raise ConfigError("config.data.image_name must name the seqio task of the image stream "
                          "when config.data.image_batch_size > 0")
    if loss.adversarial_weight > 0:
        r = config.data.resolution
        if r < 8 or r & (r - 1):
            raise ConfigError(
                "config.data.resolution must be a power of two >= 8 when "
                "config.loss.adversarial_weight > 0 (the discriminator halves it down to 4)")
        positive(config, "discriminator.channels", "discriminator.learning_rate")
        _dtype(config.discriminator, "discriminator")


def _validate_maskgit(config: Config) -> None:
    for section in ("model", "tokens", "text", "masking", "sampling"):
        if section not in config:
            raise ConfigError(f"config.{section} is missing: config.stage='maskgit' needs a "
                              "transformer config (configs/maskgit.py)")
    for f in ("num_layers", "width", "num_heads", "mlp_dim", "dtype", "remat"):
        if f not in config.model:
            raise ConfigError(f"config.model.{f} is missing: config.stage='maskgit' needs a "
                              "transformer config (configs/maskgit.py)")
    positive_int(config, "model.width", "model.num_layers", "model.num_heads", "model.mlp_dim",
                 "text.max_length", "text.embed_dim")
    m = config.model
    if m.width % m.num_heads:
        raise ConfigError(f"config.model.num_heads={m.num_heads} does not divide "
                          f"config.model.width={m.width}")
    _dtype(m)
    if config.text.get("frozen_dtype", "float32") not in ("float32", "bfloat16"):
        raise ConfigError(f"config.text.frozen_dtype must be float32 or bfloat16, got "
                          f"{config.text.frozen_dtype!r}")
    if m.get("attention", "xla") not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention must be one of "
                          f"{', '.join(ATTENTION_IMPLEMENTATIONS)}, got {m.attention!r}")
    # 0s stand for the tokenizer's values (`with_tokens_of`).
    grid = tuple(config.tokens.grid)
    if len(grid) != 3 or any(not _is_int(g) or g < 0 for g in grid) or (
            any(grid) and not all(grid)):
        raise ConfigError(f"config.tokens.grid must be three positive integers [t, h, w] (or "
                          f"0s: the tokenizer's), got {grid}")
    vocab = config.tokens.vocab_size
    if not _is_int(vocab) or vocab == 1 or vocab < 0:
        raise ConfigError(f"config.tokens.vocab_size must be an integer >= 2 (or 0: the "
                          f"tokenizer's codebook size), got {vocab!r}")
    if grid[0] and grid[0] != 1 + (config.data.num_frames - 1) // 2:
        raise ConfigError(
            f"config.tokens.grid[0]={grid[0]} does not match config.data.num_frames="
            f"{config.data.num_frames} (1 + (T - 1) / 2 token frames)")
    if config.text.max_length < 2:
        raise ConfigError("config.text.max_length must be >= 2 (text and EOS)")
    in_range(config, "text.dropout", 0, 1, high_open=True)
    in_range(config, "label_smoothing", 0, 1, high_open=True)
    in_range(config, "masking.prefix_fraction", 0, 1)
    in_range(config, "masking.frame_fraction", 0, 1)
    weight = config.masking.get("image_weight", 1.0)
    if not (_is_number(weight) and weight > 0):
        raise ConfigError(f"config.masking.image_weight must be a number > 0, got {weight!r}")
    in_range(config, "data.image_fraction", 0, 1)
    in_range(config, "data.continuation_fraction", 0, 1)
    validate_sampling(config.sampling, "config.sampling.")
    enc = config.text.encoder
    if enc == "trainable":
        positive_int(config, "text.num_layers", "text.num_heads", "text.mlp_dim")
        if config.text.embed_dim % config.text.num_heads:
            raise ConfigError(f"config.text.num_heads={config.text.num_heads} does not divide "
                              f"config.text.embed_dim={config.text.embed_dim}")
    elif enc != "t5":
        raise ConfigError(f"config.text.encoder must be 'trainable' or 't5', got {enc!r}")


def validate_sampling(values: Any, prefix: str) -> None:  # noqa: ANN401 - a mapping
    """The decoding knobs: `num_steps` and `candidates` >= 1, `refine_sweeps` >= 0, the rest
    >= 0 (a missing `choice_temperature` or None means: the token temperature; a missing
    `candidate_guidance` or None: the guidance scale). `prefix` names where they came from
    (`config.sampling.` or `--` for a command's flags)."""
    steps = values["num_steps"]
    if not _is_int(steps) or steps < 1:
        raise ConfigError(f"{prefix}num_steps must be an integer >= 1, got {steps!r}")
    sweeps = values.get("refine_sweeps", 0)
    if not _is_int(sweeps) or sweeps < 0:
        raise ConfigError(f"{prefix}refine_sweeps must be an integer >= 0, got {sweeps!r}")
    candidates = values.get("candidates", 1)
    if not _is_int(candidates) or candidates < 1:
        raise ConfigError(f"{prefix}candidates must be an integer >= 1, got {candidates!r}")
    for f in ("guidance_scale", "temperature", "choice_temperature", "time_bias",
              "candidate_guidance"):
        value = values.get(f)
        if value is None and f in ("choice_temperature", "time_bias", "candidate_guidance"):
            continue
        if not _is_number(value) or value < 0:
            raise ConfigError(f"{prefix}{f} must be >= 0, got {value!r}")


def token_space(tokenizer: Config) -> tuple[list[int], int]:
    """([t, h, w], codebook size) of the tokens a tokenizer config produces."""
    d, m = tokenizer.data, tokenizer.model
    grid = [1 + (d.num_frames - 1) // m.temporal_patch_size, d.resolution // m.patch_size,
            d.resolution // m.patch_size]
    return grid, m.codebook_size


def with_tokens_of(config: Config, tokenizer: Config) -> Config:
    """A copy of a transformer config whose token space is its tokenizer's: `tokens.grid` and
    `tokens.vocab_size` left at 0 are taken from the tokenizer; set ones must equal it."""
    out = ml_collections.ConfigDict(config.to_dict())
    grid, vocab = token_space(tokenizer)
    if not any(config.tokens.grid):
        out.tokens.grid = tuple(grid)
    if not config.tokens.vocab_size:
        out.tokens.vocab_size = vocab
    return out


def check_tokenizer(config: Config, tokenizer: Config, where: str) -> None:
    """The transformer's token space and clips must be exactly its tokenizer's."""
    grid, codebook = token_space(tokenizer)
    if codebook != config.tokens.vocab_size:
        raise ConfigError(
            f"config.tokens.vocab_size={config.tokens.vocab_size} does not equal the codebook "
            f"size {codebook} of the tokenizer in {where}")
    if grid != list(config.tokens.grid):
        raise ConfigError(f"config.tokens.grid={list(config.tokens.grid)} does not equal the "
                          f"token grid {grid} of the tokenizer in {where}")
    for f in ("resolution", "num_frames"):
        if tokenizer.data[f] != config.data[f]:
            raise ConfigError(f"config.data.{f}={config.data[f]} differs from the tokenizer's "
                              f"{tokenizer.data[f]} ({where})")
