"""Configs: every variant is valid, every canonical field exists, impossible configs fail with
a message naming the field."""

import pytest
from conftest import load_config

from phenaki_jax.config import ConfigError, parsing, validation
from phenaki_jax.stages import registry

CANONICAL_BOTH = ["batch_size", "total_steps", "learning_rate", "seed", "data.name",
                  "data.resolution", "data.num_frames", "mesh", "checkpoint_every_steps",
                  "log_every_steps"]
CANONICAL_TOKENIZER = ["model.width", "model.spatial_layers", "model.temporal_layers",
                       "model.num_heads", "model.mlp_dim", "model.patch_size",
                       "model.temporal_patch_size", "model.codebook_size", "model.code_dim",
                       "loss.perceptual_weight", "loss.adversarial_weight"]


def _get(c, path):
    for p in path.split("."):
        c = c[p]
    return c


@pytest.mark.parametrize("variant", parsing.VARIANTS)
def test_cvivit_variants_have_canonical_fields_and_validate(variant):
    c = load_config("cvivit", f"variant={variant}")
    for f in CANONICAL_BOTH + CANONICAL_TOKENIZER:
        _get(c, f)
    validation.validate(c, num_devices=1)


def test_the_real_video_recipe_has_the_compared_budget_and_needs_a_data_set():
    """configs/cvivit_real.py: the budget and sizes its comparison with the peer names (600
    steps, batch 8, width 256, 2 + 2 layers, 4 heads, patch 8, codebook 1024, global
    attention, 64 px), and no default data: a real set must be named."""
    c = load_config("cvivit_real", "")
    m = c.model
    assert (c.total_steps, c.batch_size, c.data.resolution, c.data.image_batch_size) == (
        600, 8, 64, 0)
    assert (m.width, m.spatial_layers, m.temporal_layers, m.num_heads, m.patch_size,
            m.codebook_size, m.encoder_window) == (256, 2, 2, 4, 8, 1024, -1)
    with pytest.raises(ConfigError, match="config.data.name must name a data set"):
        validation.validate(c, num_devices=1)
    c.data.name = "prepared:/d/real64"
    validation.validate(c, num_devices=1)


def test_paper_variant_matches_paper_sizes():
    m = load_config("cvivit", "variant=paper").model
    assert (m.width, m.spatial_layers, m.temporal_layers, m.num_heads, m.mlp_dim) == (
        512, 4, 4, 8, 2048)
    assert (m.codebook_size, m.code_dim, m.patch_size, m.temporal_patch_size) == (
        8192, 32, 8, 2)


@pytest.mark.parametrize("field,value,needle", [
    ("model.patch_size", 5, "config.model.patch_size"),
    ("data.num_frames", 10, "config.data.num_frames"),
    ("model.code_dim", 4096, "config.model.code_dim"),
    ("model.num_heads", 3, "config.model.num_heads"),
    ("batch_size", 0, "config.batch_size"),
    ("learning_rate", -1.0, "config.learning_rate"),
    ("model.codebook_size", 1, "config.model.codebook_size"),
    ("ema_decay", 1.5, "config.ema_decay"),
    ("eval_batches", -1, "config.eval_batches"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("model.encoder_window", -2, "config.model.encoder_window"),
    ("model.pixel_head_channels", -1, "config.model.pixel_head_channels"),
    ("data.image_batch_size", -1, "config.data.image_batch_size"),
    ("data.augment", "flip,spin", "config.data.augment"),
    ("quantizer.restart_stop_fraction", 0.0, "config.quantizer.restart_stop_fraction"),
])
def test_impossible_config_names_the_field(field, value, needle):
    c = load_config("cvivit")
    node = c
    parts = field.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    with pytest.raises(ConfigError) as e:
        validation.validate(c, num_devices=1)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_a_config_file_with_a_non_boolean_switch_is_refused():
    c = load_config("cvivit")
    with c.unlocked():
        del c.model["temporal_residual"]
        c.model.temporal_residual = "yes"  # as a user's own config file could write it
    with pytest.raises(ConfigError, match="config.model.temporal_residual must be True or"):
        validation.validate(c, num_devices=1)


def test_mesh_must_match_devices():
    c = load_config("cvivit")
    c.mesh.data = 3  # with fsdp taking the rest, 3 must divide the devices
    with pytest.raises(ConfigError, match="config.mesh"):
        validation.validate(c, num_devices=8)
    c.mesh.data, c.mesh.model = -1, 2  # two axes may not both take the rest
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        validation.validate(c, num_devices=8)
    c.mesh.fsdp = 1
    c.batch_size = 6  # 4 data shards
    with pytest.raises(ConfigError, match="config.batch_size"):
        validation.validate(c, num_devices=8)
    assert validation.mesh_shape(c, 8) == {"data": 4, "fsdp": 1, "model": 2}
    c.batch_size, c.data.image_batch_size = 8, 6
    with pytest.raises(ConfigError, match="config.data.image_batch_size"):
        validation.validate(c, num_devices=8)


def test_fsdp_fills_the_devices_and_splits_batch_and_widths():
    c = load_config("maskgit")
    assert validation.mesh_shape(c, 8) == {"data": 1, "fsdp": 8, "model": 1}
    c.mesh.data = 2
    assert validation.mesh_shape(c, 8) == {"data": 2, "fsdp": 4, "model": 1}
    c.batch_size = 4  # data x fsdp = 8 shards
    with pytest.raises(ConfigError, match="config.batch_size=4 .* data x fsdp"):
        validation.validate(c, num_devices=8)
    c.batch_size, c.mesh.data, c.mesh.fsdp = 16, 1, 3
    c.model.width = 132  # its embed dimension is split over fsdp
    with pytest.raises(ConfigError, match="config.mesh"):
        validation.validate(c, num_devices=8)
    c.mesh.fsdp, c.mesh.data = -1, 1
    with pytest.raises(ConfigError, match="config.model.width=132 .* fsdp"):
        validation.validate(c, num_devices=8)


def test_the_image_stream_needs_a_task_name():
    c = load_config("cvivit")
    c.data.image_batch_size, c.data.image_name = 4, ""
    with pytest.raises(ConfigError, match="config.data.image_name"):
        validation.validate(c, num_devices=1)


def test_unknown_config_argument_and_variant():
    with pytest.raises(ConfigError, match="variant"):
        load_config("cvivit", "variant=huge")
    with pytest.raises(ConfigError, match="'colour'"):
        load_config("cvivit", "variant=tiny,colour=red")


def test_unknown_or_unavailable_stage_is_refused():
    c = load_config("cvivit")
    c.stage = "maskgit"  # a tokenizer config cannot train the transformer
    with pytest.raises(ConfigError, match="configs/maskgit.py"):
        validation.validate(c, num_devices=1)
    c.stage = "gan"
    with pytest.raises(ConfigError, match="config.stage"):
        validation.validate(c, num_devices=1)


@pytest.mark.parametrize("name", ["cvivit", "maskgit"])
def test_demo_recipe_flags_reproduce_the_demo_config(name, monkeypatch):
    """`report.json` gives each stage's recipe as phenaki-train flags; parsed the way
    phenaki-train parses them (from the repository's root) they must give exactly the config
    the demo trains."""
    import os

    from absl import flags
    from ml_collections import config_flags

    from phenaki_jax.cli import demo  # defines the demo's flags: imported here only

    overrides = {"cvivit": demo.DEMO_TOKENIZER, "maskgit": demo.DEMO_TRANSFORMER}[name]
    monkeypatch.chdir(os.path.dirname(os.path.dirname(parsing.repo_config_path(name))))
    argv = ["phenaki-train", *demo.recipe(name, overrides).split()]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    by_hand, trained = fv.config, demo.demo_config(name, overrides)
    assert by_hand.to_dict() == trained.to_dict()
    for key, value in overrides.items():
        assert _get(trained, key) == value
    assert trained.to_dict() != load_config(name).to_dict()
    registry.for_benchmark(trained, num_devices=1)


@pytest.mark.parametrize("override, message", [
    ("--config.model.widht=3", "unknown config field model.widht (did you mean model.width?)"),
    ("--config.mesh.fdsp=3", "unknown config field mesh.fdsp (did you mean mesh.fsdp?)"),
    ("--config.mesh.pipeline=3", "unknown config field mesh.pipeline (mesh has data, fsdp, model)"),
])
def test_an_unknown_override_reads_as_a_sentence(override, message):
    from phenaki_jax.cli.common import unknown_override

    config = f"--config={parsing.repo_config_path('cvivit')}:variant=tiny"
    assert unknown_override(["phenaki-train", config, override]) == message
    assert unknown_override(["phenaki-train", config, "--config.model.width=3"]) is None


def test_a_transformer_takes_its_token_space_from_its_tokenizer():
    c, t = load_config("maskgit"), load_config("cvivit")
    t.model.codebook_size, t.model.patch_size = 256, 4
    derived = validation.with_tokens_of(c, t)
    assert list(derived.tokens.grid) == [6, 8, 8] and derived.tokens.vocab_size == 256
    validation.validate(derived, num_devices=1, tokenizer=t)
    c.tokens.vocab_size = 512  # set by hand, it must match
    with pytest.raises(ConfigError, match="config.tokens.vocab_size=512"):
        validation.validate(validation.with_tokens_of(c, t), num_devices=1, tokenizer=t)
