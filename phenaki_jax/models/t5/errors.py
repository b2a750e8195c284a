"""The text encoder's error and the ids every T5 vocabulary shares."""

from __future__ import annotations

PAD_ID = 0  # T5 and ByT5 pad with 0; seqio pads every feature with 0 too
EOS_ID = 1


class TextEncoderError(ValueError):
    """A missing, unreadable or inconsistent text-encoder checkpoint or vocabulary; the message
    is one line naming the file (and the tensor)."""


def one_line(error: BaseException) -> str:
    """An underlying library's message, squeezed onto one line for ours."""
    return " ".join(str(error).split())
