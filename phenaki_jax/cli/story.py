"""phenaki-story: a sequence of prompts becomes one video (see `inference/story.py`).

`phenaki-story --workdir=DIR2 --prompts_file=P.txt --output=OUT.mp4`
`phenaki-story --workdir=DIR2 --stories=S.jsonl --output_dir=OUTDIR`
Beside each video: the exact frames (.npy, uint8 [T, H, W, 3]) and a JSON manifest of the
segments and settings. `--image=PATH` animates an image (it becomes frame 0).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags, logging

from phenaki_jax.cli import sampling_flags
from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_WORKDIR = flags.DEFINE_string("workdir", None, "Transformer workdir (its checkpoint holds the "
                               "frozen tokenizer).")
_TOKENIZER = flags.DEFINE_string("tokenizer_workdir", None, "Optional C-ViViT workdir; if given, "
                                 "it must be the tokenizer the transformer was trained with.")
_PROMPTS = flags.DEFINE_string("prompts_file", None, "One prompt per line, in story order.")
_OUTPUT = flags.DEFINE_string("output", None, "OUT.mp4 or OUT.gif (beside it: .npy, .json).")
_STORIES = flags.DEFINE_string("stories", None, "JSONL of {id, prompts, seed[, image]}.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where --stories writes {id}.mp4/npy/json.")
_IMAGE = flags.DEFINE_string("image", None, "Animate this image: it becomes frame 0.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (same seed, flags, checkpoints: same video).")
_COND = flags.DEFINE_integer("cond_frames", 5, "K: frames re-encoded as known tokens (odd).")
_FROM = flags.DEFINE_integer(
    "from_segment", None, "Regenerate from segment k (0-based) of the story at --output under "
    "the current prompts and --seed; segments 0 .. k-1 stay exactly as they are.")
_VIDEO = flags.DEFINE_string("video", None, "Continue this video: its last --cond_frames frames, "
                             "re-encoded, become frames 0 .. K-1.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Stories generated together (--stories).")
_FORMAT = flags.DEFINE_enum("format", "mp4", ["mp4", "gif"], "Video format of --stories.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required")
    from phenaki_jax.inference.story import CompileCounter, StoryDecoder
    from phenaki_jax.inference.story_io import (
        Story,
        read_kept,
        read_prompts,
        read_stories,
        write_result,
    )

    single = bool(_PROMPTS.value or _OUTPUT.value)
    batch = bool(_STORIES.value or _OUTPUT_DIR.value)
    if single == batch:
        raise UsageError("give either --prompts_file and --output, or --stories and "
                             "--output_dir")
    if single:
        if not (_PROMPTS.value and _OUTPUT.value):
            raise UsageError("--prompts_file and --output go together")
        if os.path.splitext(_OUTPUT.value)[1].lower() not in (".mp4", ".gif"):
            raise UsageError(f"--output must end in .mp4 or .gif, got {_OUTPUT.value}")
        if _IMAGE.value and _VIDEO.value:
            raise UsageError("give --image or --video, not both")
        stories = [Story("story", read_prompts(_PROMPTS.value), _SEED.value, _IMAGE.value,
                         _VIDEO.value)]
    else:
        if not (_STORIES.value and _OUTPUT_DIR.value):
            raise UsageError("--stories and --output_dir go together")
        if _IMAGE.value:
            raise UsageError("--image is for --prompts_file; give \"image\" per story in "
                                 "--stories")
        if _VIDEO.value or _FROM.value is not None:
            raise UsageError("--video and --from_segment are for --prompts_file and --output")
        stories = read_stories(_STORIES.value)
    if _FROM.value is not None and not 1 <= _FROM.value < len(stories[0].prompts):
        raise UsageError(f"--from_segment={_FROM.value} must be in [1, "
                         f"{len(stories[0].prompts) - 1}]: --prompts_file "
                         f"{_PROMPTS.value} has {len(stories[0].prompts)} prompts")
    logging.set_verbosity(logging.INFO)
    decoder = StoryDecoder(_WORKDIR.value, _COND.value, _BATCH.value if batch else 1,
                           _TOKENIZER.value, **sampling_flags.values())
    if _FROM.value is not None:
        earlier, kept = read_kept(_OUTPUT.value, _FROM.value, decoder.settings())
        for i, (old, new) in enumerate(zip(earlier["prompts"][:_FROM.value],
                                           stories[0].prompts, strict=False)):
            if old != new:
                raise UsageError(f"prompt {i} of --prompts_file differs from segment {i} of "
                                 f"the story at --output, which --from_segment={_FROM.value} "
                                 f"keeps; regenerate from segment {i}")
        stories[0].kept, stories[0].image = kept, earlier.get("image")
        stories[0].video = earlier.get("video")
    for s in stories:  # unreadable images and videos fail before anything is generated
        if s.image and s.kept is None:
            decoder.load_image(s.image)
        if s.video and s.kept is None:
            decoder.load_video(s.video)
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
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.data.media import MediaError
    from phenaki_jax.inference.story_io import StoryError

    run_command("phenaki-story", main, (StoryError, MediaError, CheckpointError))


if __name__ == "__main__":
    run()
