"""phenaki-embed: precomputed text-encoder embeddings of prompts, as the paper does with T5X.

`phenaki-embed --encoder=t5 --checkpoint=DIR --prompts_file=F --output=E.npz [--max_length=N]`
DIR is a Hugging Face T5 or T5 v1.1 checkpoint directory (`config.json`, `model.safetensors`,
`spiece.model`) or a T5X checkpoint directory (then `--vocabulary=PATH` names the sentencepiece
model). F holds one prompt per line (surrounding whitespace stripped, blank lines skipped).
E.npz holds `ids` int32 [N, L] (sentencepiece pieces, then EOS = 1, padded with 0 to L; longer
prompts are cut to L - 1 pieces, with a warning), `mask` int32 [N, L], `embeddings` float32
[N, L, D] (the encoder's last hidden state after its final layer norm; rows where mask is 0 are
not meaningful) and `prompts` (the N prompt strings, so a training run can look embeddings up
by caption). `--output=DIR --shards=S` writes a sharded cache instead (`cache.json` and S
shards of that layout, keyed by caption; see `data/embedding_cache.py`), one shard's
embeddings in memory at a time; `config.text.cache` takes either.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from absl import flags, logging

from phenaki_jax import storage
from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

if TYPE_CHECKING:
    from phenaki_jax.models.t5 import Params, T5Config

_ENCODER = flags.DEFINE_enum("encoder", "t5", ["t5"], "Text encoder family.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "Hugging Face T5 directory or T5X checkpoint directory.")
_VOCABULARY = flags.DEFINE_string("vocabulary", None,
                                  "sentencepiece model (default: DIR/spiece.model).")
_PROMPTS = flags.DEFINE_string("prompts_file", None, "Text file, one prompt per line.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .npz path, or a directory with --shards.")
_SHARDS = flags.DEFINE_integer("shards", 0, "Write a sharded cache of this many shards into "
                               "--output (a directory); 0: one .npz.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 64, "Tokens per prompt, EOS included.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Prompts per encoder call.")


def read_prompts(path: str) -> list[str]:
    """One prompt per line, stripped; blank lines skipped. UsageError if none or unreadable."""
    if not storage.isfile(path):
        raise UsageError(f"--prompts_file not found: {path}")
    try:
        prompts = [line.strip() for line in storage.read_text(path).splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompts_file {path} is not readable UTF-8 text: {e}") from e
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UsageError(f"--prompts_file {path} has no prompts (empty or blank lines only)")
    return prompts


def encode_prompts(config: T5Config, params: Params, ids: np.ndarray, mask: np.ndarray,
                   batch_size: int) -> np.ndarray:
    """Runs `T5Encoder(config)` over ids/mask [N, L] in batches through one jitted function;
    returns float32 [N, L, D]. The last batch is padded (fully masked rows) so that every call
    has the same shape and compiles once."""
    import jax

    from phenaki_jax.models import t5

    model = t5.T5Encoder(config)
    apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    device_params = jax.device_put(params)
    n, length = ids.shape
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        b_ids, b_mask = ids[start:start + batch_size], mask[start:start + batch_size]
        short = batch_size - b_ids.shape[0]
        if short:
            b_ids = np.concatenate([b_ids, np.zeros((short, length), b_ids.dtype)])
            b_mask = np.concatenate([b_mask, np.zeros((short, length), b_mask.dtype)])
        out.append(np.asarray(apply(device_params, b_ids, b_mask))[:batch_size - short])
    return np.concatenate(out).astype(np.float32)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, flag in (("--checkpoint", _CHECKPOINT), ("--prompts_file", _PROMPTS),
                       ("--output", _OUTPUT)):
        if not flag.value:
            raise UsageError(f"{name} is required")
    if _SHARDS.value < 0:
        raise UsageError(f"--shards must be >= 0, got {_SHARDS.value}")
    if _SHARDS.value and _OUTPUT.value.endswith(".npz"):
        raise UsageError(f"--shards={_SHARDS.value} writes a directory; --output names a file "
                         f"({_OUTPUT.value})")
    if not _SHARDS.value and not _OUTPUT.value.endswith(".npz"):
        raise UsageError(f"--output must be a .npz path (or a directory with --shards), got "
                         f"{_OUTPUT.value}")
    if _MAX_LENGTH.value < 2:
        raise UsageError(f"--max_length must be >= 2 (a piece and EOS), got "
                             f"{_MAX_LENGTH.value}")
    if _BATCH_SIZE.value < 1:
        raise UsageError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
    checkpoint = _CHECKPOINT.value
    if not storage.isdir(checkpoint):
        raise UsageError(f"--checkpoint directory not found: {checkpoint}")
    checkpoint = storage.local_dir(checkpoint)  # a gs:// checkpoint is fetched once
    vocabulary = _VOCABULARY.value or os.path.join(checkpoint, "spiece.model")
    if not storage.isfile(vocabulary):
        raise UsageError(
            f"--vocabulary not found: {vocabulary}" if _VOCABULARY.value else
            f"--checkpoint {checkpoint} has no spiece.model: pass --vocabulary=PATH")
    vocabulary = storage.local_file(vocabulary)
    prompts = read_prompts(_PROMPTS.value)

    from phenaki_jax.data import embedding_cache as cache
    from phenaki_jax.models import t5

    tokenizer = t5.SentencePieceTokenizer(vocabulary)
    ids, mask, truncated = tokenizer.encode_batch(prompts, _MAX_LENGTH.value)
    if truncated:
        logging.warning("%d of %d prompts are longer than --max_length=%d tokens (EOS included) "
                        "and were truncated; the first is prompt %d: %.60r",
                        len(truncated), len(prompts), _MAX_LENGTH.value, truncated[0] + 1,
                        prompts[truncated[0]])
    config, params = t5.load_t5(checkpoint)
    if int(ids.max()) >= config.vocab_size:
        raise t5.TextEncoderError(
            f"--vocabulary {vocabulary} yields id {int(ids.max())} but the checkpoint's "
            f"embedding has {config.vocab_size} rows: wrong vocabulary for {checkpoint}?")
    if not _SHARDS.value:
        embeddings = encode_prompts(config, params, ids, mask, _BATCH_SIZE.value)
        cache.write_npz(_OUTPUT.value, prompts, ids, mask, embeddings)
        sys.stderr.write(f"phenaki-embed: {len(prompts)} prompts -> embeddings "
                         f"{embeddings.shape}; wrote {_OUTPUT.value}\n")
        return
    shards = _SHARDS.value
    first: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        first.setdefault(prompt, i)  # a repeated prompt is stored once
    members: list[list[str]] = [[] for _ in range(shards)]
    for prompt in first:
        members[cache.shard_of(prompt, shards)].append(prompt)
    for k, names in enumerate(members):
        rows = [first[p] for p in names]
        emb = (encode_prompts(config, params, ids[rows], mask[rows], _BATCH_SIZE.value)
               if rows else np.zeros((0, ids.shape[1], config.d_model), np.float32))
        cache.write_npz(storage.join(_OUTPUT.value, cache.shard_name(k)), names, ids[rows],
                        mask[rows], emb)
    cache.write_index(_OUTPUT.value, shards, len(first), _MAX_LENGTH.value, config.d_model)
    sys.stderr.write(f"phenaki-embed: {len(first)} prompts -> {shards} shards of embeddings "
                     f"(width {config.d_model}); wrote {_OUTPUT.value}\n")


def run() -> None:
    from phenaki_jax.models.t5 import TextEncoderError

    run_command("phenaki-embed", main, (TextEncoderError,))


if __name__ == "__main__":
    run()
