"""phenaki-prepare: image-text and video-text crawls -> prepared record shards, on Apache Beam.

`phenaki-prepare --input=SOURCE --output=DIR [--resolution=R] [--stride=S] [...]
[Beam pipeline options]`

SOURCE is an img2dataset / video2dataset output directory, a LAION-style parquet, a
WebVid-style or Panda-70M-style CSV (local media), or a JSONL manifest
(`phenaki_jax.data.prepare.formats`). DIR receives ArrayRecord shards of `tf.train.Example`s,
`report.json` and `dataset.json` (`phenaki_jax.data.records`); train on it with
`--config.data.name=prepared:DIR`. Without `--runner`, Beam's DirectRunner runs the pipeline
in one worker process per core; `--runner=DataflowRunner --project=... --region=...
--temp_location=gs://...` (or Flink, Spark) runs the same pipeline on a cluster. A rerun
prepares only the shards that have no stats file yet.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags

from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_INPUT = flags.DEFINE_string("input", None, "Crawl output directory, .parquet, .csv or .jsonl.")
_OUTPUT = flags.DEFINE_string("output", None, "Prepared directory (local or gs://).")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Frame size after the centre crop.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 11, "Frames per clip (11 = 1.4 s at 8 fps).")
_CONTEXT = flags.DEFINE_integer("context_frames", 5,
                                "Frames a continuation clip takes from the segment before.")
_STRIDE = flags.DEFINE_integer("stride", 11, "Frames between the starts of a video's windows.")
_VALIDATION = flags.DEFINE_float(
    "validation_fraction", 0.05,
    "Fraction of sources (videos, images) held out for validation (1: an evaluation-only set).")
_QUALITY = flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored frames.")
_ROWS = flags.DEFINE_integer("rows_per_shard", 1000, "Table rows per output shard.")


def _check() -> None:
    for name, value in (("input", _INPUT.value), ("output", _OUTPUT.value)):
        if not value:
            raise UsageError(f"--{name} is required")
    for name, value, low in (("resolution", _RESOLUTION.value, 8), ("num_frames",
                             _NUM_FRAMES.value, 2), ("stride", _STRIDE.value, 1),
                             ("rows_per_shard", _ROWS.value, 1)):
        if value < low:
            raise UsageError(f"--{name}={value} must be at least {low}")
    if not 0 < _CONTEXT.value < _NUM_FRAMES.value:
        raise UsageError(f"--context_frames={_CONTEXT.value} must be in [1, --num_frames)")
    if not 0.0 <= _VALIDATION.value <= 1.0:
        raise UsageError(f"--validation_fraction={_VALIDATION.value} must be in [0, 1]")
    if not 1 <= _QUALITY.value <= 100:
        raise UsageError(f"--jpeg_quality={_QUALITY.value} must be in [1, 100]")


def main(argv: Sequence[str]) -> None:
    _check()
    from phenaki_jax.data.features import FPS
    from phenaki_jax.data.prepare import examples, pipeline

    settings = examples.Settings(
        resolution=_RESOLUTION.value, num_frames=_NUM_FRAMES.value,
        context_frames=_CONTEXT.value, stride=_STRIDE.value, fps=FPS,
        validation_fraction=_VALIDATION.value, jpeg_quality=_QUALITY.value)
    report = pipeline.run(_INPUT.value, _OUTPUT.value, settings, _ROWS.value, argv[1:])
    print(json.dumps(report))
    sys.stderr.write(f"phenaki-prepare: kept {report['kept']}; wrote {_OUTPUT.value}\n")


def run() -> None:
    from phenaki_jax.data.prepare.formats import PrepareError
    run_command("phenaki-prepare", main, (PrepareError,), pass_unknown=True)


if __name__ == "__main__":
    run()
