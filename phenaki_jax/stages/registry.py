"""The stages by name (`config.stage`), built for training, benchmarking or inference.

Only the transformer differs between the three: in training it tokenizes frames with the
frozen tokenizer its config names and reads text as its config says; in a benchmark it takes
random token ids and needs no checkpoint; at inference its tokenizer comes from its own
checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from phenaki_jax.checkpoint import CheckpointError
from phenaki_jax.config import ConfigError, parsing, validation
from phenaki_jax.stages import restore
from phenaki_jax.stages.base import Stage
from phenaki_jax.stages.cvivit import CViViTStage
from phenaki_jax.stages.maskgit import MaskGITStage
from phenaki_jax.stages.text_inputs import TextInputs

STAGES: dict[str, type[Stage]] = {"cvivit": CViViTStage, "maskgit": MaskGITStage}
Config = ml_collections.ConfigDict


def _check_stage(config: Config) -> None:
    if config.get("stage") not in STAGES:
        raise ConfigError(f"config.stage must be one of {tuple(STAGES)}, "
                          f"got {config.get('stage')!r}")


def for_training(config: Config, num_devices: int | None = None) -> tuple[Config, Stage]:
    """(the config as trained, the stage), validated; a transformer's token space is taken
    from its tokenizer checkpoint, read once here."""
    _check_stage(config)
    if config.stage == "cvivit":
        validation.validate(config, num_devices)
        return config, CViViTStage(config)
    validation.validate(config, training=True)
    platform = validation.ATTENTION_IMPLEMENTATIONS[config.model.get("attention", "xla")]
    if platform and jax.default_backend() != platform:
        raise ConfigError(f"config.model.attention={config.model.attention} runs on {platform} "
                          f"devices, and this run's are {jax.default_backend()}; use xla")
    step, tokenizer = restore.tokenizer_of(config)
    config = validation.with_tokens_of(config, tokenizer)
    validation.validate(config, num_devices, tokenizer=tokenizer, training=True)
    stage = MaskGITStage(config, tokenizer, TextInputs.for_training(config),
                         tokenizer_checkpoint=(config.tokenizer_workdir, step))
    return config, stage


def for_benchmark(config: Config, num_devices: int | None = None) -> tuple[Config, Stage]:
    """(config, stage) with no checkpoint: a transformer takes random token ids over the token
    space of its variant's tokenizer config (or the one it sets) and random text."""
    _check_stage(config)
    if config.stage == "cvivit":
        validation.validate(config, num_devices)
        return config, CViViTStage(config)
    config = validation.with_tokens_of(config, parsing.variant_config("cvivit", config.variant))
    validation.validate(config, num_devices)
    return config, MaskGITStage(config, None, TextInputs.for_benchmark(config))


def restore_for_inference(workdir: str, expected_stage: str | None = None,
                          step: int | None = None, mesh: jax.sharding.Mesh | None = None,
                          name: str = "--workdir") -> tuple[Config, Stage, Any]:
    """(config, stage, state) from `workdir`'s newest complete checkpoint (or `step`'s) on
    this machine's devices. A transformer's frozen tokenizer is the one in its checkpoint.
    `name` is how errors name the directory."""
    _, config = restore.read_config(workdir, expected_stage, name)
    _check_stage(config)
    if config.stage == "cvivit":
        stage: Stage = CViViTStage(config)
    else:
        stage = MaskGITStage(config, tokenizer_config(workdir, config),
                             TextInputs.for_inference(config))
    return config, stage, restore.restore_state(workdir, stage, mesh, step)


def tokenizer_config(workdir: str, config: Config) -> Config:
    """The config of the tokenizer frozen in a transformer checkpoint: stored beside it, or,
    for a checkpoint that predates that, read from the `tokenizer_workdir` it names."""
    meta = restore.read_meta(workdir)
    if "tokenizer" in meta:
        return ml_collections.ConfigDict(meta["tokenizer"]["config"])
    if not config.get("tokenizer_workdir"):
        raise CheckpointError(f"{workdir} names no tokenizer")
    return restore.read_config(config.tokenizer_workdir, "cvivit",
                               f"the tokenizer_workdir of {workdir}")[1]
