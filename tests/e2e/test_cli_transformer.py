"""phenaki-train for the transformer: it learns from the text, resumes exactly, refuses a
tokenizer whose codebook or grid does not fit, and phenaki-bench answers for it."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
from conftest import (
    MICRO_TRANSFORMER,
    MICRO_TRANSFORMER_RESUME_STEP,
    assert_one_line_error,
    load_config,
    run_cli,
)


def rows(workdir):
    return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]


def test_trained_transformer_uses_its_text(micro_transformer_dir):
    evals = [r for r in rows(micro_transformer_dir) if "eval_loss" in r]
    final = evals[-1]
    # The unconditional baseline is the same model with the text dropped, on the same clips
    # and masks: what the text is worth. A model that ignored its prompt would show no gap;
    # "clearly" = the paired per-clip gain is over 4 standard errors (128 validation clips).
    assert final["eval_loss"] < final["eval_loss_uncond"], final
    assert final["eval_text_gain_per_clip"] > 4 * final["eval_text_gain_stderr"] > 0, final
    # Training losses are of single batches of 8, so compare means of several logged steps.
    # An untrained model's guess is uniform over the 256 codes: ln 256 = 5.55 nats per token.
    train = [r["loss"] for r in rows(micro_transformer_dir) if "loss" in r]
    first, last = np.mean(train[:5]), np.mean(train[-10:])
    assert last < 0.4 * np.log(256), train
    assert last < first - 0.15, train
    for key in ("step", "loss", "learning_rate", "step_time_s", "examples_per_s"):
        assert key in rows(micro_transformer_dir)[0]


def test_resume_from_a_periodic_checkpoint_repeats_the_same_losses(micro_transformer_dir,
                                                                   micro_tokenizer_dir,
                                                                   tmp_path):
    # Copy the finished run, drop its final checkpoint and the log after the periodic
    # checkpoint's step, and resume: the later steps must log what the uninterrupted run logged.
    kept = MICRO_TRANSFORMER_RESUME_STEP
    workdir = str(tmp_path / "resumed")
    shutil.copytree(micro_transformer_dir, workdir)
    for d in glob.glob(os.path.join(workdir, "checkpoints", "*")):
        if os.path.basename(d) != str(kept):
            shutil.rmtree(d)
    reference = {r["step"]: r["loss"] for r in rows(micro_transformer_dir) if "loss" in r}
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows(micro_transformer_dir)
                     if r["step"] <= kept and "loss" in r)
    # Compiled as the fixture was (its programs come from the compilation cache), and 200
    # steps run faster optimised. Without the final evaluation, which the losses do not need.
    run_cli("train", *MICRO_TRANSFORMER, f"--workdir={workdir}", "--config.eval_batches=0",
            f"--config.tokenizer_workdir={micro_tokenizer_dir}", check=True, optimize=True)
    resumed = {r["step"]: r["loss"] for r in rows(workdir) if "loss" in r}
    later = [s for s in reference if s > kept]
    assert later
    for s in later:
        np.testing.assert_allclose(resumed[s], reference[s], rtol=1e-5)


def test_continuation_context_is_given_in_training_and_evaluation(micro_tokenizer_dir):
    """A batch's `context_frames` reach the step: with `masking.give_context` the tokens of a
    continuation's first 5 frames (token frames 0-2) are never masked, in the train step and in
    the evaluation; without it the masks are the plain ones."""
    import jax

    from phenaki_jax.config import validation
    from phenaki_jax.stages import masking, restore
    from phenaki_jax.stages.maskgit import EVAL_SEED, MaskGITStage
    from phenaki_jax.stages.text_inputs import TextInputs

    s = 16  # tokens per token frame (4 x 4)
    config = load_config("maskgit")
    config.batch_size, config.model.width, config.model.num_layers = 8, 32, 1
    config.model.num_heads, config.model.mlp_dim, config.tokens.vocab_size = 2, 64, 256
    config.text.num_layers, config.text.embed_dim, config.text.mlp_dim = 1, 32, 64
    tconfig = restore.read_config(micro_tokenizer_dir, "cvivit")[1]
    config = validation.with_tokens_of(config, tconfig)
    rng = np.random.default_rng(0)
    raw = {"frames": rng.integers(0, 256, (8, 11, 32, 32, 3)).astype(np.uint8),
           "is_image": np.zeros((8,), np.int32), "text": [b"a red circle moves up"] * 8,
           "context_frames": np.asarray([5, 0] * 4, np.int32)}
    shares, counts = {}, {}
    for give in (True, False):
        config.masking.give_context = give
        stage = MaskGITStage(config, tconfig, TextInputs.for_training(config))
        assert ("context_frames" in stage.batch_axes) == give
        batch = {k: v for k, v in stage.host_batch(raw).items() if k in stage.batch_axes}
        state = stage.init(jax.random.key(0))
        counts[give] = float(jax.jit(stage.eval_step)(state, batch)["masked"])
        shares[give] = float(jax.jit(stage.train_step)(state, batch)[1]["masked_share"])
    # The same draws as the step's (mask_tokens is checked against NumPy in test_maskgit).
    given = masking.context_token_frames(raw["context_frames"], 2)
    key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 0))[0]
    ref = {give: np.asarray(masking.mask_tokens(
        key, (6, 4, 4), raw["is_image"], config.masking.prefix_fraction,
        given_frames=given if give else None)[0]) for give in (True, False)}
    assert not ref[True][::2, :3 * s].any() and ref[False][::2, :3 * s].any()
    for give in (True, False):
        assert np.isclose(shares[give], ref[give].sum() / ref[give].size, rtol=1e-6), (
            give, shares[give], ref[give].sum() / ref[give].size)
    eval_ref = {give: np.asarray(masking.mask_tokens(
        jax.random.key(EVAL_SEED), (6, 4, 4), raw["is_image"], 0.0,
        given_frames=given if give else None)[0]).sum() for give in (True, False)}
    assert counts == eval_ref and counts[True] < counts[False]


def test_vocabulary_and_grid_mismatches_are_refused_before_compiling(micro_tokenizer_dir,
                                                                     tmp_path):
    common = [*MICRO_TRANSFORMER, f"--workdir={tmp_path}/w",
              f"--config.tokenizer_workdir={micro_tokenizer_dir}"]
    proc = run_cli("train", *common, "--config.tokens.vocab_size=512")
    assert_one_line_error(proc, "config.tokens.vocab_size=512", "codebook size 256")
    proc = run_cli("train", *common, "--config.tokens.grid=(6,8,8)")
    assert_one_line_error(proc, "config.tokens.grid")
    proc = run_cli("train", *MICRO_TRANSFORMER, f"--workdir={tmp_path}/w",
                   f"--config.tokenizer_workdir={tmp_path}/nothing")
    assert_one_line_error(proc, "config.tokenizer_workdir", "does not exist")
    proc = run_cli("train", *MICRO_TRANSFORMER, f"--workdir={tmp_path}/w")
    assert_one_line_error(proc, "config.tokenizer_workdir")
    assert not os.path.exists(f"{tmp_path}/w/checkpoints")


def test_transformer_workdir_is_not_a_tokenizer(micro_transformer_dir, tmp_path):
    proc = run_cli("train", *MICRO_TRANSFORMER, f"--workdir={tmp_path}/w",
                   f"--config.tokenizer_workdir={micro_transformer_dir}")
    assert_one_line_error(proc, "not a C-ViViT tokenizer")


def test_bench_abstract_paper_and_sampling_of_tiny():
    proc = run_cli("bench", "--config=configs/maskgit.py:variant=paper", "--abstract",
                   check=True)
    out = json.loads(proc.stdout)
    assert out["tokens_shape"] == [6, 16, 16]
    assert 1.7e9 < out["params"] < 1.95e9
    proc = run_cli("bench", "--config=configs/maskgit.py:variant=tiny", "--steps=1", "--sample",
                   "--config.model.width=64", "--config.model.num_layers=1",
                   "--config.model.mlp_dim=128", "--config.sampling.num_steps=3",
                   "--config.batch_size=4", check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("params", "tokens_shape", "batch_size", "compile_s", "step_s",
                "examples_per_s", "flops_per_step", "achieved_flops_per_s",
                "matmul_peak_flops_per_s", "mfu", "sample_s"):
        assert key in out, key
    assert out["sample_s"] > 0 and out["flops_per_step"] > 0


def test_frozen_t5_in_the_step_equals_its_phenaki_embed_cache(micro_tokenizer_dir, tmp_path):
    """The paper's setting in miniature: a frozen T5 (a tiny Hugging Face checkpoint made
    here) conditions the transformer, either run inside the step or read from the cache that
    phenaki-embed wrote; both give the same losses, and the story decoder uses the T5 stored
    in the transformer's checkpoint."""
    from t5_reference import random_params, tiny_config, to_hf, train_spiece, write_hf

    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.data import shapes_world as sw
    from phenaki_jax.inference.story import StoryDecoder
    from phenaki_jax.inference.story_io import Story
    from phenaki_jax.models import t5 as text

    hf = str(tmp_path / "t5")
    params = random_params(tiny_config(), seed=7)
    write_hf(hf, to_hf(params, tiny_config()))
    train_spiece(hf)
    captions = [sw.caption_image(c, s) for c in sw.COLORS for s in sw.SHAPES]
    captions += [sw.caption_video(c, s, d) for c in sw.COLORS for s in sw.SHAPES
                 for d in sw.DIRECTIONS]
    prompts = tmp_path / "captions.txt"
    prompts.write_text("\n".join(captions) + "\n")
    cache = str(tmp_path / "cache.npz")
    run_cli("embed", "--encoder=t5", f"--checkpoint={hf}", f"--prompts_file={prompts}",
            f"--output={cache}", "--max_length=16", check=True)
    common = [*MICRO_TRANSFORMER, "--config.total_steps=3", "--config.log_every_steps=1",
              "--config.checkpoint_every_steps=3", "--config.eval_batches=0",
              f"--config.tokenizer_workdir={micro_tokenizer_dir}", "--config.text.encoder=t5",
              f"--config.text.checkpoint={hf}", "--config.text.embed_dim=32",
              "--config.text.max_length=16", "--config.text.frozen_dtype=float32"]
    run_cli("train", *common, f"--workdir={tmp_path}/frozen", check=True)
    run_cli("train", *common, f"--workdir={tmp_path}/cached", f"--config.text.cache={cache}",
            check=True)
    frozen = [r["loss"] for r in rows(f"{tmp_path}/frozen") if "loss" in r]
    cached = [r["loss"] for r in rows(f"{tmp_path}/cached") if "loss" in r]
    assert len(frozen) == 3
    np.testing.assert_allclose(frozen, cached, rtol=1e-4)

    decoder = StoryDecoder(f"{tmp_path}/cached", batch_size=1)
    stored = decoder.state.aux["text"]
    _, loaded = text.load_hf_t5(hf)
    np.testing.assert_array_equal(np.asarray(stored["encoder_norm"]["scale"]),
                                  loaded["encoder_norm"]["scale"])
    result = decoder.generate([Story("t5", ["a red square moves up", "a red square moves left"])])
    assert result[0].frames.shape == (17, 32, 32, 3)
    # The checkpoint stores where the T5 came from, not its weights ...
    meta = json.loads(open(f"{tmp_path}/cached/checkpoints/3/meta/metadata").read())
    assert meta["text_encoder"]["checkpoint"] == hf
    saved = open(f"{tmp_path}/cached/checkpoints/3/state/_METADATA").read()
    assert "encoder_norm" not in saved and "'tokenizer'" in saved
    # ... and refuses another T5 put in its place.
    write_hf(hf, to_hf(random_params(tiny_config(), seed=8), tiny_config()))
    with pytest.raises(CheckpointError, match="is not the T5 this checkpoint was trained with"):
        StoryDecoder(f"{tmp_path}/cached", batch_size=1)
    # A wrong width is refused before anything compiles.
    proc = run_cli("train", *common, f"--workdir={tmp_path}/bad", "--config.text.embed_dim=48")
    assert_one_line_error(proc, "config.text.embed_dim=48", "config.json")
