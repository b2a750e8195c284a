"""The helpers of benchmarks/tokenizer_compositions.py: its clips are what they claim to be (the
spec's judge reads each one's colour, shape and direction back, every start keeps the object
inside), and its error shares split the squared error as defined."""

import functools
import importlib.util
import os

import numpy as np
from conftest import ROOT

from phenaki_jax.data import shapes_world as sw
from phenaki_jax.evaluation import judge


@functools.cache
def _load():
    path = os.path.join(ROOT, "benchmarks", "tokenizer_compositions.py")
    spec = importlib.util.spec_from_file_location("tokenizer_compositions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_composition_clips_are_judged_as_their_pair_and_direction():
    bench = _load()
    pairs = sorted(sw.HELD_OUT) + [("red", "circle"), ("white", "square")]
    clips, owners, captions = bench.pair_clips(pairs, 2, 32, np.random.default_rng(0))
    assert clips.shape == (len(pairs) * len(sw.DIRECTIONS) * 2, sw.NUM_FRAMES, 32, 32, 3)
    assert owners == [p for p in pairs for _ in range(len(sw.DIRECTIONS) * 2)]
    size = sw.object_size(32)
    for i, (color, shape) in enumerate(owners):
        direction = sw.DIRECTIONS[(i // 2) % len(sw.DIRECTIONS)]
        assert captions[i] == sw.caption_video(color, shape, direction)
        verdict = judge.judge_segment(clips[i], captions[i], 32)
        assert verdict["adheres"], (i, color, shape, direction, verdict["direction"])
        # every frame shows the whole object: as many lit pixels as the shape has
        lit = clips[i].any(-1).sum(axis=(1, 2))
        assert (lit == sw.shape_mask(shape, size).sum()).all()


def test_error_shares_split_background_lit_and_dark_channels():
    bench = _load()
    clips = np.zeros((1, 1, 4, 4, 3), np.uint8)
    clips[0, 0, 1, 1] = (255, 0, 255)  # one magenta object pixel
    recon = clips.copy()
    recon[0, 0, 1, 1, 0] = 245  # lit channel off by 10: 100
    recon[0, 0, 1, 1, 1] = 20   # dark channel of the object lit by 20: 400
    recon[0, 0, 3, 3, 2] = 30   # background pixel: 900
    shares = bench.error_shares(clips, recon)
    np.testing.assert_allclose([shares["background"], shares["object_lit_channels"],
                                shares["object_dark_channels"]],
                               [900 / 1400, 100 / 1400, 400 / 1400])


def test_the_peer_comparison_runs_configs_that_exist():
    """Every command line benchmarks/compare_peer.py gives phenaki-bench names only config
    fields that exist (a renamed field would end the comparison half way), and the tokenizer
    runs the peer's model: global attention, videos only."""
    from phenaki_jax.cli import common as cli

    path = os.path.join(ROOT, "benchmarks", "compare_peer.py")
    spec = importlib.util.spec_from_file_location("compare_peer", path)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    lines = ([compare.ours_args(s, 1) for s in compare.SIZES]
             + [compare.ours_maskgit_args(s, 1) for s in compare.MASKGIT_SIZES])
    for args in lines:
        assert args[1:3] == ["-m", "phenaki_jax.bench"]
        assert cli.unknown_override(args[3:]) is None, args
    for args in lines[:len(compare.SIZES)]:
        assert "--config.model.encoder_window=-1" in args
        assert "--config.data.image_batch_size=0" in args


def test_the_continuity_spread_is_min_and_max_of_every_shared_number():
    path = os.path.join(ROOT, "benchmarks", "story_continuity.py")
    spec = importlib.util.spec_from_file_location("story_continuity", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"workdir": "a", "watching": {"breaks": 3, "by_place": {"seam": {"breaks": 2}}},
             "targets": {"ok": True}, "only_here": 1.0},
            {"workdir": "b", "watching": {"breaks": 7, "by_place": {"seam": {"breaks": 1}}},
             "targets": {"ok": False}}]
    assert bench.spread(rows) == {"watching.breaks": {"min": 3, "max": 7},
                                  "watching.by_place.seam.breaks": {"min": 1, "max": 2}}
