"""Real crawls to a story: phenaki-prepare a video2dataset and an img2dataset crawl of real
files, train both stages a few steps from `prepared:DIR` through seqio, write a story; and
the reader's promises (batches by index, disjoint hosts, one-line mismatches)."""

import json
import os

import numpy as np
import pytest
from conftest import MICRO, MICRO_TRANSFORMER, load_config, run_cli

from phenaki_jax.config import ConfigError
from phenaki_jax.data import pipeline as input_pipeline
from phenaki_jax.data.prepare import examples, pipeline
from tests import real_media as rm

R = 32
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("crawls")
    clips = [rm.clip_path(n) for n in ("bigbuckbunny.mp4", "carphone_pristine.mp4",
                                       "bikes.mp4")]
    rm.write_video2dataset(str(d / "videos"), [[
        rm.Item("a bunny in a meadow", clips[0]), rm.Item("a man talks in a car", clips[1]),
        rm.Item("bikes in a row", clips[2])]])
    rm.write_img2dataset(str(d / "images"), [[rm.Item(f"photo {i}", p)
                                              for i, p in enumerate(rm.photo_paths()[:4])]])
    settings = examples.Settings(resolution=R, stride=3, validation_fraction=0.0)
    for name in ("videos", "images"):
        pipeline.run(str(d / name), str(d / f"{name}_prepared"), settings, 1000, IN_PROCESS)
    return d


def config_for(data_name):
    c = load_config("cvivit")
    c.data.name, c.data.resolution, c.batch_size = data_name, R, 4
    c.data.image_batch_size = 0
    return c


def test_batches_are_a_function_of_their_index_and_hosts_split_them(prepared):
    name = f"prepared:{prepared / 'videos_prepared'}"
    c = config_for(name)
    stream = input_pipeline.host_batches(c, "train")
    first = [next(stream) for _ in range(6)]
    resumed = next(input_pipeline.host_batches(c, "train", start_batch=5))
    for key in ("frames", "text", "context_frames", "is_image"):
        np.testing.assert_array_equal(resumed[key], first[5][key])
    halves = [next(input_pipeline.host_batches(c, "train", 5, process_index=i,
                                               process_count=2)) for i in (0, 1)]
    # Host i holds global examples i, i + 2, ... of the batch: interleaved, they are it.
    np.testing.assert_array_equal(np.stack([halves[0]["frames"], halves[1]["frames"]], 1)
                                  .reshape(first[5]["frames"].shape), first[5]["frames"])
    # One directory is read in exact epochs (here 43 windows): no window twice in 24.
    texts = np.concatenate([b["text"] for b in first])[:24]
    assert len(set(zip(texts, np.concatenate([b["frames"] for b in first])[:24].reshape(24, -1)
                       .sum(1), strict=True))) == 24


def test_mixture_rates_and_mismatches(prepared):
    mix = (f"prepared:{prepared / 'videos_prepared'}=0.8,"
           f"{prepared / 'images_prepared'}=0.2")
    c = config_for(mix)
    c.batch_size = 50
    batches = input_pipeline.host_batches(c, "train")
    images = np.concatenate([next(batches)["is_image"] for _ in range(4)])
    assert 0.12 < images.mean() < 0.28  # 200 draws at 0.2: 4 standard errors either side
    c = config_for(f"prepared:{prepared / 'videos_prepared'}")
    c.data.resolution = 64
    with pytest.raises(ConfigError, match="prepared with resolution=32.*resolution is 64"):
        next(input_pipeline.host_batches(c, "train"))
    with pytest.raises(ConfigError, match="rate"):
        input_pipeline.get_provider(f"prepared:{prepared}/a=x,{prepared}/b=1", R)
    with pytest.raises(ConfigError, match="dataset.json"):
        input_pipeline.get_provider(f"prepared:{prepared / 'videos'}", R)


def test_prepared_crawls_train_both_stages_and_tell_a_story(prepared, tmp_path):
    videos, images = prepared / "videos_prepared", prepared / "images_prepared"
    tokenizer, transformer = str(tmp_path / "tokenizer"), str(tmp_path / "transformer")
    data = [f"--config.data.name=prepared:{videos}", f"--config.data.resolution={R}"]
    run_cli("train", *MICRO, *data, f"--workdir={tokenizer}", "--config.total_steps=2",
            "--config.eval_batches=0", f"--config.data.image_name=prepared:{images}",
            "--config.data.image_batch_size=2", check=True)
    run_cli("train", *MICRO_TRANSFORMER, *data, f"--workdir={transformer}",
            f"--config.tokenizer_workdir={tokenizer}", "--config.total_steps=2",
            "--config.eval_batches=0", "--config.log_every_steps=1", check=True)
    rows = [json.loads(x) for x in open(os.path.join(transformer, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a man talks in a car\nbikes in a row\n")
    run_cli("story", f"--workdir={transformer}", f"--prompts_file={prompts}",
            f"--output={tmp_path / 's.mp4'}", check=True)
    story = np.load(tmp_path / "s.npy")
    assert story.ndim == 4 and story.shape[1:] == (R, R, 3) and story.shape[0] > 11


def test_a_finite_read_gives_every_record_once(prepared):
    mix = (f"prepared:{prepared / 'videos_prepared'}=0.5,"
           f"{prepared / 'images_prepared'}=0.5")
    info = [json.load(open(prepared / d / "dataset.json")) for d in ("videos_prepared",
                                                                      "images_prepared")]
    total = sum(i["splits"]["train"]["records"] for i in info)
    got = input_pipeline.split_examples(config_for(mix), "train", 1000)
    assert len(got["text"]) == total
    rows = {(t, f.tobytes()) for t, f in zip(got["text"], got["frames"], strict=True)}
    assert len(rows) == total
    assert got["is_image"].sum() == info[1]["splits"]["train"]["records"]
