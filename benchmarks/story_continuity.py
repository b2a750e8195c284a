"""Long stories' continuity and drift, and the adherence targets, for one or more trained
transformers (for example three training seeds of the demo's recipe), as JSON lines.

    .venv/bin/python benchmarks/story_continuity.py --workdir=runs/demo/transformer \
        [--workdir=runs/demo_seed1/transformer ...] [--stories=8] [--length=160] [--seed=0] \
        [--unconstrained] [--targets] [--clips=60] [--target_stories=30] [--output_dir=DIR] \
        [--num_steps=N ...]

For each workdir, `--stories` stories of `--length` prompts are told by the story decoder with
the evaluation's watching storyteller (a prompt that would push the object off the canvas is
re-aimed), and with `--unconstrained` also with every prompt as drawn. Each is judged frame
step by frame step (`phenaki_jax.evaluation.continuity`): breaks per 1000 frame steps in all
and by place (seam, tubelet boundary, within a tubelet), how many stories break at least
once, and the segment adherence of the first and last ten prompts. With `--targets` it also
runs `phenaki-eval`'s sets with 3- and 4-prompt stories and checks each adherence target with
the 5-point margin, and against the low end of its rate's 95% (Wilson) interval. The decoding
flags of phenaki-story and phenaki-eval (`--num_steps`, `--temperature`, ...) override each
checkpoint's `config.sampling` in every part. One JSON line per workdir; with several, a last
line with the spread (min / max) of every number.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from types import SimpleNamespace

from absl import flags

FLAGS = flags.FLAGS

# The adherence targets (docs/shapes_world.md) and the margin each must be met by.
TARGETS = {"in_distribution_adherence": 0.80, "held_out_adherence": 0.50,
           "story_segment_adherence": 0.70, "story_continuity": 0.90}
MARGIN = 0.05


def define_flags() -> None:
    from phenaki_jax.cli import sampling_flags  # noqa: F401  (defines the decoding flags)

    flags.DEFINE_multi_string("workdir", None, "A transformer workdir (repeat for several).",
                              required=True)
    flags.DEFINE_integer("stories", 8, "Long stories per workdir.", lower_bound=1)
    flags.DEFINE_integer("length", 160, "Prompts per long story (>= 20: the first and last "
                         "ten are compared).", lower_bound=20)
    flags.DEFINE_integer("seed", 0, "Seed of the prompts and the sampling.")
    flags.DEFINE_bool("unconstrained", False, "Also tell the long stories with every prompt "
                      "as drawn, even where it pushes the object off the canvas.")
    flags.DEFINE_bool("targets", False, "Also check the four adherence targets (3- and "
                      "4-prompt stories).")
    flags.DEFINE_integer("clips", 60, "Clips per single-prompt set (--targets).", lower_bound=1)
    flags.DEFINE_integer("target_stories", 30, "Short stories per length (--targets).",
                         lower_bound=1)
    flags.DEFINE_string("output_dir", None, "Where the target evaluations write their reports "
                        "(default: a new temporary directory).")


def measure(workdir: str, args: SimpleNamespace) -> dict:
    from phenaki_jax.evaluation import continuity
    from phenaki_jax.evaluation.adherence import EvalPlan, evaluate, keep_inside, prompt_sets
    from phenaki_jax.inference.story import StoryDecoder
    from phenaki_jax.inference.story_io import Story

    decoder = StoryDecoder(workdir, batch_size=args.stories, **args.sampling)
    prompts = prompt_sets(args.seed, 1, args.stories, args.length)["stories"]
    stories = [Story(f"long_{i:03d}", p, args.seed + i) for i, p in enumerate(prompts)]
    out = {"workdir": workdir, "length": args.length, "seed": args.seed,
           "sampling": decoder.sampling.as_dict()}
    storytellers = {"watching": keep_inside(decoder.resolution,
                                            decoder.num_frames - decoder.cond_frames)}
    if args.unconstrained:
        storytellers["as_drawn"] = None
    for name, storyteller in storytellers.items():
        t0 = time.time()
        results = decoder.generate(stories, storyteller)
        out[name] = {**continuity.summarize(results, decoder.resolution, decoder.cond_frames),
                     "seconds": round(time.time() - t0, 1)}
    if args.targets:
        out["targets"] = {}
        decoder = StoryDecoder(workdir, batch_size=16, **args.sampling)  # phenaki-eval's batch
        for length in (3, 4):
            directory = os.path.join(args.output_dir, workdir.strip("/").replace("/", "_"),
                                     f"eval_{length}")
            summary = evaluate(decoder, directory, EvalPlan(
                clips=args.clips, stories=args.target_stories, story_length=length,
                seed=args.seed))["summary"]
            out["targets"][f"{length}_prompt_stories"] = {
                **{k: summary[k] for k in TARGETS},
                # Rates are counts over 60 or 30: compared to the margin in whole-percent
                # steps, so that 0.85 meets 0.80 + 0.05 despite float rounding.
                "every_target_with_margin": all(summary[k] >= v + MARGIN - 1e-9
                                                for k, v in TARGETS.items()),
                # Each rate's 95% interval: a margin missed by a clip or two can be chance
                # alone, a target below its interval's low end is not.
                "intervals_95": {k: summary["intervals_95"][k] for k in TARGETS},
                "every_target_below_its_interval": all(summary["intervals_95"][k][0] >= v
                                                       for k, v in TARGETS.items())}
    return out


def spread(rows: list[dict]) -> dict:
    """min / max of every number the rows share (nested dicts flattened with '.')."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = v
        return out

    flats = [flat(r) for r in rows]
    keys = [k for k in flats[0] if all(k in f for f in flats)]
    return {k: {"min": min(f[k] for f in flats), "max": max(f[k] for f in flats)} for k in keys}


def main(argv: Sequence[str]) -> None:
    from phenaki_jax.cli import sampling_flags
    from phenaki_jax.cli.common import UsageError

    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for w in FLAGS.workdir:
        if not os.path.isdir(w):
            raise UsageError(f"--workdir {w} does not exist")
    args = SimpleNamespace(**{k: FLAGS[k].value for k in (
        "stories", "length", "seed", "unconstrained", "targets", "clips", "target_stories")})
    args.output_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="story_continuity_")
    args.sampling = sampling_flags.values()
    rows = []
    for w in FLAGS.workdir:
        rows.append(measure(w, args))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        print(json.dumps({"spread": spread(rows)}), flush=True)


if __name__ == "__main__":
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.cli import common as cli
    from phenaki_jax.inference.story_io import StoryError

    define_flags()
    cli.run("story_continuity", main, expected=(CheckpointError, StoryError))
