"""phenaki-eval: prompt adherence and story continuity on the shapes world, by the spec's judge.

`phenaki-eval --tokenizer_workdir=DIR --workdir=DIR2 --output_dir=OUT [--clips=N]
[--stories=M] [--story_length=P] [--seed=S] [--guidance_scale=G] [--num_steps=N]
[--temperature=T] [--choice_temperature=C] [--time_bias=B] [--refine_sweeps=R]`

Generates single-prompt clips in distribution, single-prompt clips of the held-out
compositions and multi-prompt stories with the story decoder, judges them
(`phenaki_jax/sample/evaluation.py`), and writes OUT/eval_report.json (rates, per-example
verdicts, seconds per prompt) and OUT/eval_sheet.png (frames with their prompts and verdicts,
so a person can check the numbers).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from phenaki_jax import cli

_TOKENIZER = flags.DEFINE_string("tokenizer_workdir", None, "C-ViViT workdir.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Transformer workdir.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the report and sheet go.")
_CLIPS = flags.DEFINE_integer("clips", 60, "Single-prompt clips per set.")
_STORIES = flags.DEFINE_integer("stories", 24, "Multi-prompt stories.")
_LENGTH = flags.DEFINE_integer("story_length", 3, "Prompts per story.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the prompt choice and of generation.")
_COND = flags.DEFINE_integer("cond_frames", 5, "K of the story decoder.")
_SCALE = flags.DEFINE_float("guidance_scale", None, "Guidance (default: the config's).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Decoding steps (default: the config's).")
_TEMP = flags.DEFINE_float("temperature", None, "Temperature (default: the config's).")
_TIME_BIAS = flags.DEFINE_float("time_bias", None, "Time bias (default: the config's).")
_CHOICE = flags.DEFINE_float("choice_temperature", None,
                             "Confidence noise (default: the config's).")
_REFINE = flags.DEFINE_integer("refine_sweeps", None,
                               "Token-frame revisits (default: the config's).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Clips generated together.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag in (_TOKENIZER, _WORKDIR, _OUTPUT_DIR):
        if not flag.value:
            raise cli.UsageError(f"--{flag.name} is required")
    from absl import logging

    logging.set_verbosity(logging.INFO)
    from phenaki_jax.sample.evaluation import evaluate

    report = evaluate(_TOKENIZER.value, _WORKDIR.value, _OUTPUT_DIR.value, _CLIPS.value,
                      _STORIES.value, _LENGTH.value, _SEED.value, _COND.value, _SCALE.value,
                      _STEPS.value, _TEMP.value, _BATCH.value, _TIME_BIAS.value,
                      _CHOICE.value, _REFINE.value)
    sys.stdout.write(json.dumps({**report["summary"],
                                 "report": os.path.join(_OUTPUT_DIR.value, "eval_report.json"),
                                 "contact_sheet": report["contact_sheet"]}) + "\n")


def run() -> None:
    from phenaki_jax.data.video import MediaError
    from phenaki_jax.sample.story import StoryError
    from phenaki_jax.train.checkpoint import CheckpointError

    cli.run("phenaki-eval", main, (StoryError, MediaError, CheckpointError))


if __name__ == "__main__":
    run()
