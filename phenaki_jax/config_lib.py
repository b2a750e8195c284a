"""Config helpers shared by `configs/*.py`: variant parsing, common fields, validation.

Configs are ml_collections files with `get_config(arg)`; `arg` is `key=value,key=value`
(big_vision style), e.g. `configs/cvivit.py:variant=tiny`. Model sizes come from the variant
name through one table per stage, never copied between files. Every field a user may change
is validated by `validate(config)` before anything is compiled; a failure raises `ConfigError`
whose message names the field.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

VARIANTS = ("tiny", "small", "base", "paper")
STAGES = ("cvivit", "maskgit")


class ConfigError(ValueError):
    """An impossible or malformed config; the message names the offending field."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `k=v,k2=v2` into a ConfigDict, typed like `defaults`; unknown keys are errors."""
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"config argument '{key}' is unknown (known: {', '.join(sorted(defaults))})"
            )
        default = defaults[key]
        if not sep:
            value = "true" if isinstance(default, bool) else value
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"config argument '{key}' must be true or false, got '{value}'")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            try:
                out[key] = int(value)
            except ValueError as e:
                raise ConfigError(f"config argument '{key}' must be an integer") from e
        else:
            out[key] = value
    return out


def common_config(stage: str, variant: str) -> ml_collections.ConfigDict:
    """Fields that exist in the configs of both stages (the contract's canonical fields)."""
    if variant not in VARIANTS:
        raise ConfigError(f"config argument 'variant' must be one of {VARIANTS}, got '{variant}'")
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.variant = variant
    c.seed = 0
    c.batch_size = 8
    c.total_steps = 1000
    c.learning_rate = 1e-4
    c.warmup_steps = 100
    c.end_learning_rate_factor = 0.1  # cosine decays to this fraction of the peak
    c.weight_decay = 1e-4
    c.adam_b1 = 0.9
    c.adam_b2 = 0.99
    c.grad_clip_norm = 1.0
    c.ema_decay = 0.0  # 0 disables the EMA copy of the parameters
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0: evaluate only at the end
    c.eval_batches = 4  # 0 turns evaluation off (periodic and final)
    c.max_consecutive_nonfinite = 5
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
    c.data = ml_collections.ConfigDict()
    c.data.name = "shapes_world_videos_mix_32"
    c.data.resolution = 32
    c.data.num_frames = 11
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.prefetch = 2
    return c


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
    """The `runlocal` switch of every config: a few steps at batch 2, to check a large
    variant on a workstation before launching it."""
    config.batch_size = 2
    config.total_steps = 10
    config.warmup_steps = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 5


def _positive(config: ml_collections.ConfigDict, *fields: str) -> None:
    for field in fields:
        value = _get(config, field)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"config.{field} must be a positive number, got {value!r}")


def _non_negative(config: ml_collections.ConfigDict, *fields: str) -> None:
    for field in fields:
        value = _get(config, field)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"config.{field} must be >= 0, got {value!r}")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Resolves `config.mesh` (one axis may be -1) against the device count."""
    sizes = dict(config.mesh.items())
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {sizes}")
    for k, v in sizes.items():
        if v != -1 and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"config.mesh.{k} must be a positive integer or -1, got {v!r}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh {sizes} does not divide the {num_devices} available devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"config.mesh {sizes} needs {fixed} devices but {num_devices} are available"
        )
    return sizes


def validate_common(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks the fields shared by both stages."""
    if config.stage not in STAGES:
        raise ConfigError(f"config.stage must be one of {STAGES}, got {config.stage!r}")
    _positive(config, "batch_size", "total_steps", "learning_rate", "checkpoint_every_steps",
              "log_every_steps", "keep_checkpoints", "max_consecutive_nonfinite",
              "data.resolution", "data.num_frames")
    _non_negative(config, "warmup_steps", "weight_decay", "grad_clip_norm", "ema_decay",
                  "eval_every_steps", "eval_batches", "end_learning_rate_factor")
    for f in ("batch_size", "total_steps", "checkpoint_every_steps", "log_every_steps",
              "data.resolution", "data.num_frames", "warmup_steps", "seed", "eval_batches"):
        if not isinstance(_get(config, f), int) or isinstance(_get(config, f), bool):
            raise ConfigError(f"config.{f} must be an integer, got {_get(config, f)!r}")
    if config.ema_decay >= 1:
        raise ConfigError(f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
    if not 0 <= config.adam_b1 < 1 or not 0 <= config.adam_b2 < 1:
        raise ConfigError("config.adam_b1 and config.adam_b2 must be in [0, 1)")
    if (config.data.num_frames - 1) % 2:
        raise ConfigError(
            f"config.data.num_frames must be 1 + 2k (first frame alone, then 2-frame tubelets), "
            f"got {config.data.num_frames}"
        )
    if not isinstance(config.data.name, str) or not config.data.name:
        raise ConfigError("config.data.name must name a seqio task or mixture")
    if num_devices is not None:
        sizes = mesh_shape(config, num_devices)
        if config.batch_size % sizes["data"]:
            raise ConfigError(
                f"config.batch_size={config.batch_size} is not divisible by the mesh's data "
                f"axis ({sizes['data']} devices)"
            )


def validate_cvivit_model(model: ml_collections.ConfigDict, resolution: int,
                          num_frames: int) -> None:
    """Checks a C-ViViT model config against the clip size it will tokenize."""
    for f in ("width", "spatial_layers", "temporal_layers", "num_heads", "mlp_dim",
              "patch_size", "temporal_patch_size", "codebook_size", "code_dim"):
        v = model[f]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"config.model.{f} must be a positive integer, got {v!r}")
    if resolution % model.patch_size:
        raise ConfigError(
            f"config.model.patch_size={model.patch_size} does not divide "
            f"config.data.resolution={resolution}"
        )
    if (num_frames - 1) % model.temporal_patch_size:
        raise ConfigError(
            f"config.model.temporal_patch_size={model.temporal_patch_size} does not divide "
            f"config.data.num_frames - 1 = {num_frames - 1}"
        )
    if model.width % model.num_heads:
        raise ConfigError(
            f"config.model.num_heads={model.num_heads} does not divide "
            f"config.model.width={model.width}"
        )
    if model.code_dim > model.width:
        raise ConfigError(
            f"config.model.code_dim={model.code_dim} must not exceed config.model.width="
            f"{model.width} (codes are a low-dimensional factorization of the encoder output)"
        )
    if model.codebook_size < 2:
        raise ConfigError("config.model.codebook_size must be at least 2")
    window = model.get("encoder_window", -1)
    if not isinstance(window, int) or isinstance(window, bool) or window < -1:
        raise ConfigError(
            f"config.model.encoder_window must be -1 (global attention) or a radius >= 0, "
            f"got {window!r}")
    if model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.model.dtype must be float32 or bfloat16, got {model.dtype!r}")


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `path` (a configs/*.py file) and calls its `get_config(arg)`, as --config does."""
    import importlib.util
    import os

    name = "phenaki_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def repo_config_path(name: str) -> str:
    """configs/<name>.py of this checkout."""
    import os

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", f"{name}.py")
