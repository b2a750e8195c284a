"""The one schema every data set yields, and the frame rate Phenaki trains at.

Every seqio task and mixture of the project (the shapes world, JSONL manifests) yields
examples with exactly these features:

* `frames`: uint8 `[T, R, R, 3]` (T = 11 at the paper's size). Images are frame 0 followed
  by zero frames.
* `is_image`: int32 scalar, 1 for an image, 0 for a video or continuation clip.
* `text`: tf.string scalar, the caption.
* `context_frames`: int32 scalar, how many leading frames the caption does not describe
  (5 for a continuation clip, 0 otherwise). The transformer always gives these frames'
  tokens, as the story decoder gives the frames it continues from.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

FPS = 8  # Phenaki's clips: 8 frames per second (11 frames = 1.4 s)
# name -> (dtype, rank)
SCHEMA: Mapping[str, tuple[str, int]] = {
    "frames": ("uint8", 4),
    "is_image": ("int32", 0),
    "text": ("string", 0),
    "context_frames": ("int32", 0),
}
FEATURES = tuple(SCHEMA)


@functools.cache
def output_features() -> Mapping[str, Any]:
    """`SCHEMA` as seqio's output features. No feature is tokenized here: the text encoder
    owns its tokenizer, and frames are pixels. (seqio and TensorFlow load on first use, so
    that the commands that need no input pipeline never load them.)"""
    import seqio
    import tensorflow as tf

    vocabulary = seqio.PassThroughVocabulary(size=0)
    return {name: seqio.Feature(vocabulary, add_eos=False, dtype=getattr(tf, dtype), rank=rank)
            for name, (dtype, rank) in SCHEMA.items()}
