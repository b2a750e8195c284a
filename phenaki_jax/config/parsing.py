"""Building configs: the `configs/*.py` files' shared parts and loading them.

Configs are ml_collections files with `get_config(arg)`; `arg` is `key=value,key=value`
(big_vision style), e.g. `configs/cvivit.py:variant=tiny`. Model sizes come from the variant
name through one table per stage, never copied between files. `config.validation` checks
every field before anything is compiled.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from phenaki_jax.config import ConfigError

VARIANTS = ("tiny", "small", "base", "paper")
STAGES = ("cvivit", "maskgit")


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
    # Device mesh axes (-1: the devices the others leave): the batch over data x fsdp,
    # parameters' embed dimension over fsdp, tensor parallelism over model.
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "model": 1})
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
    if "attention" in config.get("model", {}):
        config.model.attention = "xla"  # a workstation has no TPU kernels


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `path` (a configs/*.py file) and calls its `get_config(arg)`, as --config does."""
    name = "phenaki_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def repo_config_path(name: str) -> str:
    """configs/<name>.py of this checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "configs", f"{name}.py")


def variant_config(stage: str, variant: str) -> ml_collections.ConfigDict:
    """configs/<stage>.py at `variant`, with its defaults."""
    return load_config_file(repo_config_path(stage), f"variant={variant}")
