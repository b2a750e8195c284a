"""The paper's video perceptual loss (I3D) on real video: its cost per step and its effect, one
JSON line:

    .venv/bin/python benchmarks/real_video_peer.py --workdir=W       # trains the recipe
    .venv/bin/python benchmarks/i3d_loss_effect.py --workdir=W [--steps=100] [--weight=0.1]

From the recipe's trained tokenizer in W/ours (configs/cvivit_real.py on W/train), two
fine-tunes of `--steps` steps at a constant learning rate of 1e-4, identical but for
`loss.video_perceptual_weight` (0 and `--weight`), each judged by `phenaki-eval` on the held-out
clips of W/eval. Both start from the same checkpoint and read the same batches, so the
difference is the loss's. `step_s` is the median of the loop's logged step times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.real_video_peer import CONFIG, _run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/phenaki_real_video")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--max_eval_clips", type=int, default=64)
    args = parser.parse_args()

    import numpy as np

    wd = args.workdir
    trained = os.path.join(wd, "ours")
    with open(os.path.join(trained, "metrics.jsonl")) as f:
        start = max(json.loads(line)["step"] for line in f)
    out = {"from_step": start, "steps": args.steps, "learning_rate": 1e-4,
           "video_perceptual_weight": args.weight}
    for name, weight in (("without_i3d", 0.0), ("with_i3d", args.weight)):
        run = os.path.join(wd, f"finetune_{name}")
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval", "events.*"))
        os.remove(os.path.join(run, "metrics.jsonl"))
        _run([sys.executable, "-m", "phenaki_jax.train", f"--config={CONFIG}",
              f"--workdir={run}", f"--config.data.name=prepared:{os.path.join(wd, 'train')}",
              f"--config.total_steps={start + args.steps}", "--config.learning_rate=1e-4",
              "--config.end_learning_rate_factor=1.0", "--config.log_every_steps=10",
              f"--config.checkpoint_every_steps={args.steps}",
              f"--config.loss.video_perceptual_weight={weight}"], run + ".log")
        _run([sys.executable, "-m", "phenaki_jax.cli.eval", f"--workdir={run}",
              f"--data=prepared:{os.path.join(wd, 'eval')}",
              f"--output_dir={os.path.join(run, 'eval')}",
              f"--max_clips={args.max_eval_clips}"], run + "_eval.log")
        with open(os.path.join(run, "eval", "eval_report.json")) as f:
            report = json.load(f)["reconstruction"]
        with open(os.path.join(run, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        steps = [r["step_time_s"] for r in rows if "step_time_s" in r and r["step"] > start + 1]
        out[name] = {**{k: report[k] for k in ("clips", "psnr", "ssim", "lpips", "fvd")},
                     "step_s": float(np.median(steps))}
    out["step_cost_ratio"] = round(out["with_i3d"]["step_s"] / out["without_i3d"]["step_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
