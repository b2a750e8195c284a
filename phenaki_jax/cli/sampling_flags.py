"""The decoding flags that phenaki-story and phenaki-eval share, one per `SamplingSettings`
field; unset flags keep the value in the transformer checkpoint's `config.sampling`."""

from __future__ import annotations

from typing import Any

from absl import flags

_FLAGS = {
    "num_steps": flags.DEFINE_integer("num_steps", None, "Decoding steps (default: config)."),
    "guidance_scale": flags.DEFINE_float("guidance_scale", None,
                                         "Classifier-free guidance (default: config)."),
    "temperature": flags.DEFINE_float("temperature", None,
                                      "Sampling temperature (default: config)."),
    "choice_temperature": flags.DEFINE_float(
        "choice_temperature", None,
        "Noise on the confidences that choose which tokens to keep (default: config)."),
    "time_bias": flags.DEFINE_float(
        "time_bias", None,
        "Earlier token frames first: confidence handicap per token frame (default: config)."),
    "refine_sweeps": flags.DEFINE_integer(
        "refine_sweeps", None,
        "Passes that re-predict each token frame from all the others (default: config)."),
    "candidates": flags.DEFINE_integer(
        "candidates", None,
        "Samples per clip, the one the model finds most likely kept (default: config)."),
    "candidate_guidance": flags.DEFINE_float(
        "candidate_guidance", None,
        "The guidance scale under which the candidates are ranked (default: config; "
        "unset there: --guidance_scale)."),
}


def values() -> dict[str, Any]:
    """The flags by field; None where unset."""
    return {name: flag.value for name, flag in _FLAGS.items()}
