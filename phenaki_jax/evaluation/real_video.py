"""phenaki-eval on real video: a tokenizer's reconstructions (PSNR, SSIM, LPIPS, FVD) of a data
set's validation clips and, for a transformer, the FVD of clips it generates from the same
clips' captions against the real ones, at its guidance scale and without guidance.

Both read the data set exactly as training does (`--config.data.name` syntax: a JSONL
manifest, a seqio task), at the model's resolution and frame count; images are left out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import ml_collections
import numpy as np
import tqdm
from PIL import Image

from phenaki_jax import storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data import pipeline
from phenaki_jax.evaluation import video_metrics
from phenaki_jax.inference.story import StoryDecoder
from phenaki_jax.inference.story_io import Story
from phenaki_jax.inference.tokenizer import run_tokenizer
from phenaki_jax.stages import registry


def validation_clips(config: ml_collections.ConfigDict, data: str,
                     max_clips: int) -> tuple[np.ndarray, list[str]]:
    """(uint8 [N, T, R, R, 3], captions) of the first `max_clips` video clips of `data`'s
    validation split, at `config`'s size."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.name = data
    config.data.train_split = config.data.eval_split  # only the validation split is read
    examples = pipeline.split_examples(config, config.data.eval_split, max_clips * 4)
    videos = np.flatnonzero(examples["is_image"] == 0)[:max_clips]
    if videos.size < 2:
        raise ConfigError(f"--data={data} has {videos.size} video clips in its "
                          f"'{config.data.eval_split}' split; FVD needs at least 2")
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
             for t in examples["text"][videos]]
    return examples["frames"][videos], texts


def contact_sheet(rows: list[tuple[str, np.ndarray]], path: str, clips: int = 4) -> None:
    """PNG: for each of the first clips, its frames side by side, one row per kind (real,
    reconstructed, generated), labelled on the left."""
    blocks = []
    for i in range(min(clips, rows[0][1].shape[0])):
        for _, frames in rows:
            blocks.append(np.concatenate(list(frames[i]), axis=1))
        blocks.append(np.full((4, blocks[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(blocks)
    scale = max(1, 96 // rows[0][1].shape[2])
    image = Image.fromarray(np.repeat(np.repeat(sheet, scale, 0), scale, 1))
    with storage.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def evaluate_real(workdir: str, data: str, output_dir: str, max_clips: int = 64,
                  batch_size: int = 8) -> dict[str, Any]:
    """Writes OUTPUT_DIR/eval_report.json and eval_sheet.png; returns the report."""
    config, stage, state = registry.restore_for_inference(workdir)
    if config.stage == "cvivit":
        model = stage.model
        variables = {"params": stage.inference_params(state), **state.model_state}
    else:
        model, variables = stage.tokenizer_model, state.aux["tokenizer"]
    real, captions = validation_clips(config, data, max_clips)
    storage.makedirs(output_dir)
    quiet = not sys.stderr.isatty()  # progress bars on a terminal only
    recon, _ = run_tokenizer(model, variables, real)
    real_features = video_metrics.i3d_features(real)
    report: dict[str, Any] = {
        "workdir": storage.resolve(workdir), "data": data, "stage": config.stage,
        "fvd_protocol": "I3D Kinetics-400 logits of whole clips, frames resized to 224x224 "
                        "(bilinear) in [-1, 1]; Frechet distance in float64",
        "reconstruction": video_metrics.reconstruction_report(real, recon, real_features)}
    rows = [("real", real), ("reconstructed", recon)]
    if config.stage == "maskgit":
        decoder = StoryDecoder(workdir, batch_size=batch_size)
        stories = [Story(f"clip{i:04d}", [c], seed=i) for i, c in enumerate(captions)]
        by_scale, generated = {}, None
        scales = [decoder.sampling.guidance_scale, 0.0]
        for scale in tqdm.tqdm(dict.fromkeys(scales), desc="guidance", disable=quiet):
            decoder.sampling = dataclasses.replace(decoder.sampling, guidance_scale=scale)
            frames = np.stack([r.frames for r in decoder.generate(stories)])
            generated = frames if generated is None else generated
            by_scale[f"{scale:g}"] = video_metrics.fvd_from_features(
                real_features, video_metrics.i3d_features(frames))
        report["generation"] = {"clips": len(stories), "guidance_scale": scales[0],
                                "fvd": by_scale[f"{scales[0]:g}"],
                                "fvd_by_guidance_scale": by_scale}
        rows.append(("generated", generated))
    sheet = os.path.join(output_dir, "eval_sheet.png")
    contact_sheet(rows, sheet)
    report["contact_sheet"] = sheet
    storage.write_text(os.path.join(output_dir, "eval_report.json"), json.dumps(report, indent=2))
    return report
