"""phenaki-story: a sequence of prompts becomes one video (see `phenaki_jax/sample/story.py`).

`phenaki-story --tokenizer_workdir=DIR --workdir=DIR2 --prompts_file=P.txt --output=OUT.mp4`
`phenaki-story --tokenizer_workdir=DIR --workdir=DIR2 --stories=S.jsonl --output_dir=OUTDIR`
Beside each video: the exact frames (.npy, uint8 [T, H, W, 3]) and a JSON manifest of the
segments and settings. `--image=PATH` animates an image (it becomes frame 0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags, logging

from phenaki_jax import cli
from phenaki_jax.sample.story import (
    CompileCounter,
    Story,
    StoryDecoder,
    StoryError,
    read_prompts,
    read_stories,
    write_result,
)

_TOKENIZER = flags.DEFINE_string("tokenizer_workdir", None, "C-ViViT workdir (checkpoint A).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Transformer workdir (checkpoint B).")
_PROMPTS = flags.DEFINE_string("prompts_file", None, "One prompt per line, in story order.")
_OUTPUT = flags.DEFINE_string("output", None, "OUT.mp4 or OUT.gif (beside it: .npy, .json).")
_STORIES = flags.DEFINE_string("stories", None, "JSONL of {id, prompts, seed[, image]}.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where --stories writes {id}.mp4/npy/json.")
_IMAGE = flags.DEFINE_string("image", None, "Animate this image: it becomes frame 0.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (same seed, flags, checkpoints: same video).")
_COND = flags.DEFINE_integer("cond_frames", 5, "K: frames re-encoded as known tokens (odd).")
_SCALE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance (default: config).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Decoding steps (default: config).")
_TEMP = flags.DEFINE_float("temperature", None, "Sampling temperature (default: config).")
_CHOICE = flags.DEFINE_float("choice_temperature", None, "Noise on the confidences that choose "
                             "which tokens to keep (default: config).")
_TIME_BIAS = flags.DEFINE_float("time_bias", None, "Earlier token frames first: confidence "
                                "handicap per token frame (default: config).")
_REFINE = flags.DEFINE_integer("refine_sweeps", None, "Passes that re-predict each token frame "
                               "from all the others after decoding (default: config).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Stories generated together (--stories).")
_FORMAT = flags.DEFINE_enum("format", "mp4", ["mp4", "gif"], "Video format of --stories.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for flag in (_TOKENIZER, _WORKDIR):
        if not flag.value:
            raise cli.UsageError(f"--{flag.name} is required")
    single = bool(_PROMPTS.value or _OUTPUT.value)
    batch = bool(_STORIES.value or _OUTPUT_DIR.value)
    if single == batch:
        raise cli.UsageError("give either --prompts_file and --output, or --stories and "
                             "--output_dir")
    if single:
        if not (_PROMPTS.value and _OUTPUT.value):
            raise cli.UsageError("--prompts_file and --output go together")
        if os.path.splitext(_OUTPUT.value)[1].lower() not in (".mp4", ".gif"):
            raise cli.UsageError(f"--output must end in .mp4 or .gif, got {_OUTPUT.value}")
        stories = [Story("story", read_prompts(_PROMPTS.value), _SEED.value, _IMAGE.value)]
    else:
        if not (_STORIES.value and _OUTPUT_DIR.value):
            raise cli.UsageError("--stories and --output_dir go together")
        if _IMAGE.value:
            raise cli.UsageError("--image is for --prompts_file; give \"image\" per story in "
                                 "--stories")
        stories = read_stories(_STORIES.value)
    logging.set_verbosity(logging.INFO)
    decoder = StoryDecoder(_TOKENIZER.value, _WORKDIR.value, _COND.value, _STEPS.value,
                           _SCALE.value, _TEMP.value, _BATCH.value if batch else 1,
                           _TIME_BIAS.value, _CHOICE.value, _REFINE.value)
    for s in stories:  # unreadable images fail before anything is generated
        if s.image:
            decoder.load_image(s.image)
    results = decoder.generate(stories)
    settings = decoder.settings()
    settings["compilations"] = CompileCounter.count()
    for result in results:
        path = _OUTPUT.value if single else os.path.join(
            _OUTPUT_DIR.value, f"{result.story.id}.{_FORMAT.value}")
        write_result(result, path, settings)
        sys.stdout.write(f"{path}: {result.frames.shape[0]} frames, "
                         f"{len(result.story.prompts)} prompts\n")


def run() -> None:
    from phenaki_jax.data.video import MediaError
    from phenaki_jax.train.checkpoint import CheckpointError

    cli.run("phenaki-story", main, (StoryError, MediaError, CheckpointError))


if __name__ == "__main__":
    run()
