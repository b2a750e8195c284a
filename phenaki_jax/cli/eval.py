"""phenaki-eval: prompt adherence and story continuity on the shapes world, by its judge.

`phenaki-eval --workdir=DIR2 --output_dir=OUT [--clips=N] [--stories=M] [--story_length=P]
[--seed=S] [--tokenizer_workdir=DIR] [--guidance_scale=G] [--num_steps=N] [--temperature=T]
[--choice_temperature=C] [--time_bias=B] [--refine_sweeps=R]`

Generates single-prompt clips in distribution, single-prompt clips of the held-out
compositions and multi-prompt stories with the story decoder, judges them
(`evaluation/adherence.py`), and writes OUT/eval_report.json (rates, per-example verdicts,
seconds per prompt) and OUT/eval_sheet.png (frames with their prompts and verdicts, so a
person can check the numbers).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags, logging

from phenaki_jax.cli import sampling_flags
from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_WORKDIR = flags.DEFINE_string("workdir", None, "Transformer workdir.")
_TOKENIZER = flags.DEFINE_string("tokenizer_workdir", None, "Optional C-ViViT workdir; if given, "
                                 "it must be the tokenizer the transformer was trained with.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the report and sheet go.")
_CLIPS = flags.DEFINE_integer("clips", 60, "Single-prompt clips per set.")
_STORIES = flags.DEFINE_integer("stories", 24, "Multi-prompt stories.")
_LENGTH = flags.DEFINE_integer("story_length", 3, "Prompts per story.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the prompt choice and of generation.")
_COND = flags.DEFINE_integer("cond_frames", 5, "K of the story decoder.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Clips generated together.")
_DATA = flags.DEFINE_string(
    "data", None, "Judge real video instead: a data set as in --config.data.name (jsonl:..., "
    "a seqio task); its validation split's clips are reconstructed (a tokenizer or a "
    "transformer's frozen one) and, for a transformer, generated from their captions.")
_MAX_CLIPS = flags.DEFINE_integer("max_clips", 64, "With --data: validation clips judged.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag in (_WORKDIR, _OUTPUT_DIR):
        if not flag.value:
            raise UsageError(f"--{flag.name} is required")
    if _DATA.value:
        if _MAX_CLIPS.value < 2:
            raise UsageError(f"--max_clips must be >= 2 (FVD), got {_MAX_CLIPS.value}")
        from phenaki_jax.evaluation.real_video import evaluate_real

        logging.set_verbosity(logging.INFO)
        report = evaluate_real(_WORKDIR.value, _DATA.value, _OUTPUT_DIR.value, _MAX_CLIPS.value,
                               _BATCH.value)
        summary = {k: {m: v for m, v in report[k].items() if m != "per_clip"}
                   for k in ("reconstruction", "generation") if k in report}
        sys.stdout.write(json.dumps({**summary, "report": os.path.join(
            _OUTPUT_DIR.value, "eval_report.json")}) + "\n")
        return
    from phenaki_jax.evaluation.adherence import EvalPlan, evaluate
    from phenaki_jax.inference.story import StoryDecoder

    logging.set_verbosity(logging.INFO)
    plan = EvalPlan(_CLIPS.value, _STORIES.value, _LENGTH.value, _SEED.value)
    decoder = StoryDecoder(_WORKDIR.value, _COND.value, _BATCH.value, _TOKENIZER.value,
                           **sampling_flags.values())
    report = evaluate(decoder, _OUTPUT_DIR.value, plan)
    sys.stdout.write(json.dumps({**report["summary"],
                                 "report": os.path.join(_OUTPUT_DIR.value, "eval_report.json"),
                                 "contact_sheet": report["contact_sheet"]}) + "\n")


def run() -> None:
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.data.media import MediaError
    from phenaki_jax.inference.story_io import StoryError
    from phenaki_jax.models.i3d import I3DWeightsError

    run_command("phenaki-eval", main, (StoryError, MediaError, CheckpointError, I3DWeightsError))


if __name__ == "__main__":
    run()
