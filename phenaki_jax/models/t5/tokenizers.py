"""Text to ids for T5: a sentencepiece model (pretrained T5) or UTF-8 bytes (ByT5's ids, for
an encoder trained from scratch), packed as seqio packs them: pieces, EOS, then padding."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from phenaki_jax.models.t5.errors import EOS_ID, PAD_ID, TextEncoderError, one_line


def pack_ids(pieces: Sequence[Sequence[int]], max_length: int, eos_id: int = EOS_ID,
             pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """seqio's append-EOS-after-trim: each row is its first max_length - 1 ids, then EOS, then
    pad_id up to max_length. Returns (ids int32 [N, L], mask int32 [N, L], indices of rows that
    were truncated)."""
    if max_length < 1:
        raise TextEncoderError(f"max_length must be >= 1 (room for EOS), got {max_length}")
    ids = np.full((len(pieces), max_length), pad_id, np.int32)
    mask = np.zeros((len(pieces), max_length), np.int32)
    truncated = []
    for i, row in enumerate(pieces):
        row = list(row)
        if len(row) > max_length - 1:
            row = row[:max_length - 1]
            truncated.append(i)
        row.append(eos_id)
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask, truncated


class SentencePieceTokenizer:
    """A sentencepiece model (T5's `spiece.model`) as seqio's SentencePieceVocabulary with
    EOS appended: pieces, EOS, then 0 padding."""

    def __init__(self, path: str) -> None:
        import sentencepiece as spm

        if not os.path.isfile(path):
            raise TextEncoderError(f"sentencepiece model not found: {path}")
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise TextEncoderError(f"{path}: not a sentencepiece model ({one_line(e)})") from e
        self.vocab_size = int(self._sp.get_piece_size())
        self.eos_id = int(self._sp.eos_id())
        if self.eos_id < 0:
            raise TextEncoderError(f"{path}: the sentencepiece model defines no EOS piece")
        self.pad_id = PAD_ID

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, without EOS."""
        return self._sp.encode(list(texts), out_type=int)

    def encode_batch(self, texts: Sequence[str],
                     max_length: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(ids int32 [N, L], mask int32 [N, L], indices of truncated texts); see `pack_ids`."""
        return pack_ids(self.encode(texts), max_length, self.eos_id, self.pad_id)


class ByteTokenizer:
    """ByT5's ids for the text encoder trained from scratch: UTF-8 byte b -> b + 3 (0 pad,
    1 EOS, 2 unknown); 259 ids."""

    vocab_size = 259
    eos_id = EOS_ID
    pad_id = PAD_ID
    unk_id = 2
    _offset = 3

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [[b + self._offset for b in text.encode("utf-8")] for text in texts]

    def encode_batch(self, texts: Sequence[str],
                     max_length: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(ids int32 [N, L], mask int32 [N, L], indices of truncated texts); see `pack_ids`."""
        return pack_ids(self.encode(texts), max_length, self.eos_id, self.pad_id)
