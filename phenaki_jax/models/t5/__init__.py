"""The T5 text encoder: the Flax model (`model`), pretrained checkpoint loaders (`loaders`) and
the tokenizers (`tokenizers`). Phenaki conditions the video transformer on T5X embeddings of
the prompt; the names below are the package's public surface."""

from phenaki_jax.models.t5.errors import EOS_ID, PAD_ID, TextEncoderError
from phenaki_jax.models.t5.loaders import Params, load_hf_t5, load_t5, load_t5x
from phenaki_jax.models.t5.model import (
    T5Config,
    T5Encoder,
    param_shapes,
    relative_position_bucket,
    trainable_t5_config,
)
from phenaki_jax.models.t5.tokenizers import ByteTokenizer, SentencePieceTokenizer, pack_ids

__all__ = ["EOS_ID", "PAD_ID", "ByteTokenizer", "Params", "SentencePieceTokenizer", "T5Config",
           "T5Encoder", "TextEncoderError", "load_hf_t5", "load_t5", "load_t5x", "pack_ids",
           "param_shapes", "relative_position_bucket", "trainable_t5_config"]
