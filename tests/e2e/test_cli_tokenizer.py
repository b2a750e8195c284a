"""The command-line contract for the tokenizer: phenaki-train, phenaki-tokenize, phenaki-bench,
and one clear line for every bad input."""

import glob
import json
import os

import numpy as np
import pytest
from conftest import MICRO, assert_one_line_error, run_cli

from phenaki_jax.data import media as video
from phenaki_jax.data import shapes_world


@pytest.fixture(scope="module")
def micro_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("micro_tokenizer"))
    run_cli("train", *MICRO, f"--workdir={workdir}", check=True)
    return workdir


def shapes_clips(n, split="test"):
    return np.stack([shapes_world.video_example(split, i, 32).frames for i in range(n)])


def test_train_writes_metrics_checkpoints_and_events(micro_workdir):
    rows = [json.loads(line) for line in open(os.path.join(micro_workdir, "metrics.jsonl"))]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    for r in train_rows:
        for k in ("step", "loss", "learning_rate", "step_time_s", "examples_per_s"):
            assert k in r and np.isfinite(r[k]), k
    assert any("eval_psnr" in r for r in rows)
    steps = sorted(int(os.path.basename(p)) for p in
                   glob.glob(os.path.join(micro_workdir, "checkpoints", "[0-9]*")))
    assert steps == [3, 6]
    assert glob.glob(os.path.join(micro_workdir, "events.out.tfevents.*"))


def test_rerun_on_finished_workdir_resumes_and_does_nothing(micro_workdir):
    before = open(os.path.join(micro_workdir, "metrics.jsonl")).read()
    proc = run_cli("train", *MICRO, f"--workdir={micro_workdir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from step 6" in proc.stderr
    after = open(os.path.join(micro_workdir, "metrics.jsonl")).read()
    assert [json.loads(line) for line in after.splitlines() if "loss" in line] == [
        json.loads(line) for line in before.splitlines() if "loss" in line]


def test_tokenize_npy_roundtrip_and_causality(micro_workdir, tmp_path):
    clips = shapes_clips(2)
    np.save(tmp_path / "in.npy", clips)
    run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'in.npy'}",
            f"--output={tmp_path / 'out.npy'}", f"--tokens={tmp_path / 'tok.npy'}", check=True)
    out, tok = np.load(tmp_path / "out.npy"), np.load(tmp_path / "tok.npy")
    assert out.shape == clips.shape and out.dtype == np.uint8
    assert tok.shape == (2, 6, 4, 4) and tok.dtype == np.int32
    np.save(tmp_path / "prefix.npy", clips[:, :5])
    run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'prefix.npy'}",
            f"--output={tmp_path / 'pout.npy'}", f"--tokens={tmp_path / 'ptok.npy'}",
            check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "ptok.npy"), tok[:, :3])


def test_tokenize_video_and_image_files(micro_workdir, tmp_path):
    clip = shapes_clips(1)[0]
    video.write_video(str(tmp_path / "clip.mp4"), clip, fps=8)
    run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'clip.mp4'}",
            f"--output={tmp_path / 'v.npy'}", f"--tokens={tmp_path / 'vt.npy'}", check=True)
    assert np.load(tmp_path / "v.npy").shape == (1, 11, 32, 32, 3)
    assert np.load(tmp_path / "vt.npy").shape == (1, 6, 4, 4)
    from PIL import Image

    Image.fromarray(np.repeat(np.repeat(clip[0], 2, 0), 2, 1)).save(tmp_path / "im.png")
    run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'im.png'}",
            f"--output={tmp_path / 'i.npy'}", f"--tokens={tmp_path / 'it.npy'}", check=True)
    assert np.load(tmp_path / "i.npy").shape == (1, 1, 32, 32, 3)
    assert np.load(tmp_path / "it.npy").shape == (1, 1, 4, 4)


def test_tokenize_bad_inputs_one_line(micro_workdir, tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(2000))
    proc = run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'corrupt.mp4'}",
                   f"--output={tmp_path / 'o.npy'}")
    assert_one_line_error(proc, "corrupt.mp4")
    assert not (tmp_path / "o.npy").exists()

    np.save(tmp_path / "ten.npy", np.zeros((1, 10, 32, 32, 3), np.uint8))
    proc = run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'ten.npy'}",
                   f"--output={tmp_path / 'o.npy'}")
    assert_one_line_error(proc, "10 frames")

    np.save(tmp_path / "big.npy", np.zeros((1, 11, 64, 64, 3), np.uint8))
    proc = run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'big.npy'}",
                   f"--output={tmp_path / 'o.npy'}")
    assert_one_line_error(proc, "64x64")

    proc = run_cli("tokenize", f"--workdir={tmp_path / 'nothing'}",
                   f"--input={tmp_path / 'ten.npy'}", f"--output={tmp_path / 'o.npy'}")
    assert_one_line_error(proc, "checkpoint")

    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    proc = run_cli("tokenize", f"--workdir={micro_workdir}", f"--input={tmp_path / 'bad.png'}",
                   f"--output={tmp_path / 'o.npy'}")
    assert_one_line_error(proc, "bad.png")


def test_train_bad_override_and_impossible_config_one_line(tmp_path):
    proc = run_cli("train", "--config=configs/cvivit.py:variant=tiny",
                   "--config.model.widht=3", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "widht")
    proc = run_cli("train", "--config=configs/cvivit.py:variant=tiny",
                   "--config.model.patch_size=5", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "config.model.patch_size")
    proc = run_cli("train", "--config=configs/cvivit.py:variant=tiny",
                   "--config.data.name=no_such_task", f"--workdir={tmp_path}")
    assert_one_line_error(proc, "no_such_task")
    proc = run_cli("train", "--config=configs/cvivit.py:variant=enormous",
                   f"--workdir={tmp_path}")
    assert_one_line_error(proc, "variant")
    assert not os.path.exists(tmp_path / "checkpoints")


def test_train_refuses_a_different_model_in_an_existing_workdir(micro_workdir):
    args = [a for a in MICRO if "model.width" not in a] + ["--config.model.width=64",
                                                           "--config.total_steps=9"]
    proc = run_cli("train", *args, f"--workdir={micro_workdir}")
    assert_one_line_error(proc, "config.model.width")


def test_bench_abstract_paper():
    proc = run_cli("bench", "--config=configs/cvivit.py:variant=paper", "--abstract",
                   check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["tokens_shape"] == [6, 16, 16]
    assert 45e6 < out["params"] < 55e6
    assert out["batch_size"] == 128


def test_bench_measures_a_step():
    proc = run_cli("bench", "--config=configs/cvivit.py:variant=tiny", "--steps=2",
                   "--config.batch_size=2", "--config.model.width=32",
                   "--config.model.mlp_dim=64", check=True)
    out = json.loads(proc.stdout.strip())
    for k in ("params", "tokens_shape", "batch_size", "compile_s", "step_s", "examples_per_s",
              "flops_per_step", "achieved_flops_per_s", "matmul_peak_flops_per_s", "mfu",
              "page_faults_per_step"):
        assert k in out, k
    assert out["flops_per_step"] > 0 and 0 < out["mfu"] < 2
    np.testing.assert_allclose(out["examples_per_s"], 2 / out["step_s"], rtol=1e-6)
    # The model's analytic flops over the device's peak (on the CPU, the measured matmul);
    # the analytic count and XLA's agree roughly (XLA's adds what the model count leaves out).
    assert out["device_peak_flops_per_s"] == out["matmul_peak_flops_per_s"]
    np.testing.assert_allclose(out["model_mfu"], out["model_flops_per_step"] / out["step_s"]
                               / out["device_peak_flops_per_s"], rtol=1e-6)
    assert 0.3 < out["model_flops_per_step"] / out["flops_per_step"] < 2
    assert out["peak_memory_bytes"] > 1 << 20
