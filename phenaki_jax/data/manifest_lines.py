"""A JSONL manifest's lines as examples: parsing, decoding, and the process-wide record of
the bad ones (skipped, counted by reason, warned about once per file)."""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Sequence

import numpy as np
from absl import logging

from phenaki_jax import storage
from phenaki_jax.config import ConfigError
from phenaki_jax.data import media
from phenaki_jax.data.features import FPS

REASONS = ("malformed_line", "empty_text", "missing_file", "unreadable", "too_few_frames")


class BadExample(Exception):
    """One manifest line that cannot become an example; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str, file: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.file = file


class SkipLedger:
    """Process-wide record of bad examples, shared by every task and every tf.data thread.

    Keys are (manifest, line). A bad line is counted the first time it is found and
    remembered, so the count is the number of distinct bad examples met so far, however many
    epochs, datasets or splits read them. Lines proven good by a probe are remembered too, so
    building a dataset again does not decode them again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bad: dict[tuple[str, int], str] = {}
        self.good: set[tuple[str, int]] = set()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.warned: set[tuple[str, str]] = set()

    def record(self, manifest: str, line: int, bad: BadExample) -> None:
        # The warning names the file once per manifest; malformed lines have no file, so their
        # own line is the thing named.
        warn_key = (manifest, bad.file if bad.file is not None else f"line {line}")
        with self.lock:
            if (manifest, line) in self.bad:
                return
            self.bad[(manifest, line)] = bad.reason
            self.reasons[bad.reason] += 1
            first_warning = warn_key not in self.warned
            self.warned.add(warn_key)
        if first_warning:
            logging.warning("skipping bad example %s:%d (%s): %s", manifest, line + 1,
                            bad.reason, bad.detail)


LEDGER = SkipLedger()


def skipped_examples() -> int:
    """Number of distinct bad examples skipped so far in this process, over all manifests."""
    with LEDGER.lock:
        return len(LEDGER.bad)


def skipped_reasons() -> dict[str, int]:
    """`skipped_examples()` by reason: every name in `REASONS`, zero when none was met."""
    with LEDGER.lock:
        return {r: LEDGER.reasons.get(r, 0) for r in REASONS}


def read_manifest(path: str) -> list[bytes]:
    """The manifest's lines as bytes (decoded per line, so one bad byte spoils one line)."""
    if not storage.isfile(path):
        raise ConfigError(f"manifest {path} does not exist")
    try:
        data = storage.read_bytes(path)
    except OSError as e:
        raise ConfigError(f"cannot read manifest {path}: {e.strerror}") from e
    return [line.rstrip(b"\r") for line in data.split(b"\n")]


def _excerpt(raw: bytes, limit: int = 80) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_line(raw: bytes, manifest_dir: str, num_frames: int) -> tuple[str, str, str, int]:
    """One manifest line -> (kind "video" or "image", absolute media path, caption,
    context frames)."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadExample("malformed_line", f"not a JSON object: {_excerpt(raw)}") from e
    if not isinstance(entry, dict):
        raise BadExample("malformed_line", f"not a JSON object: {_excerpt(raw)}")
    kinds = [k for k in ("video", "image") if k in entry]
    if len(kinds) != 1:
        raise BadExample("malformed_line",
                          f"needs exactly one of \"video\" or \"image\": {_excerpt(raw)}")
    kind = kinds[0]
    relative = entry[kind]
    if not isinstance(relative, str) or not relative:
        raise BadExample("malformed_line", f"\"{kind}\" is not a path: {_excerpt(raw)}")
    path = storage.join_under(manifest_dir, relative)
    text = entry.get("text")
    if text is not None and not isinstance(text, str):
        raise BadExample("malformed_line", f"\"text\" is not a string: {_excerpt(raw)}", path)
    if not text or not text.strip():
        raise BadExample("empty_text", f"no caption for {path}", path)
    context = entry.get("context_frames", 0)
    limit = 1 if kind == "image" else num_frames
    if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context < limit:
        raise BadExample(
            "malformed_line", f"\"context_frames\" must be an integer in [0, {limit}) for "
            f"{'an image' if kind == 'image' else f'{num_frames} frames'}: {_excerpt(raw)}",
            path)
    return kind, path, text, context


def _decode(kind: str, path: str, resolution: int, num_frames: int) -> np.ndarray:
    """The media file -> uint8 `[num_frames, R, R, 3]`."""
    if not storage.isfile(path):
        raise BadExample("missing_file", f"{kind} file not found: {path}", path)
    try:
        if kind == "image":
            image = media.center_crop_resize(media.read_image(path), resolution)
            frames = np.zeros((num_frames, resolution, resolution, 3), np.uint8)
            frames[0] = image
            return frames
        clip = media.read_video(path, fps=FPS, max_frames=num_frames)
    except media.MediaError as e:
        raise BadExample("unreadable", str(e), path) from e
    if clip.shape[0] < num_frames:
        raise BadExample(
            "too_few_frames",
            f"{path} has {clip.shape[0]} frames at {FPS:g} fps, fewer than {num_frames}", path)
    return media.center_crop_resize(clip, resolution)


def load_example(manifest: str, lines: Sequence[bytes], line: int, resolution: int,
                 num_frames: int) -> dict[str, np.ndarray] | None:
    """Line `line` (0-based) of `manifest` as task features, or None if it is bad.

    A bad line is recorded (counted, warned about) here; a line already known to be bad is
    not decoded again.

    Returns:
      dict with `frames` uint8 `[num_frames, R, R, 3]`, `is_image` int32 `[]`, `text` bytes
      `[]`, `context_frames` int32 `[]`, or None.
    """
    manifest = storage.resolve(manifest)
    with LEDGER.lock:
        if (manifest, line) in LEDGER.bad:
            return None
    try:
        kind, path, text, context = parse_line(lines[line], os.path.dirname(manifest),
                                                num_frames)
        frames = _decode(kind, path, resolution, num_frames)
    except BadExample as bad:
        LEDGER.record(manifest, line, bad)
        return None
    return {"frames": frames, "is_image": np.int32(kind == "image"),
            "text": np.bytes_(text.encode("utf-8")), "context_frames": np.int32(context)}


def example_lines(lines: Sequence[bytes], index: int = 0, num_shards: int = 1) -> list[int]:
    """Lines i, i + n, ... of shard (i, n) that hold anything (blank lines are no examples)."""
    return [k for k in range(index, len(lines), num_shards) if lines[k].strip()]


def require_good_line(manifest: str, lines: Sequence[bytes], candidates: Sequence[int],
                       resolution: int, num_frames: int, where: str) -> None:
    """Raises a ConfigError unless some line of `candidates` is a good example.

    Tries the lines in order and stops at the first good one, so a healthy manifest costs one
    decode; without this check a manifest of only bad lines would be an empty stream that a
    training loop waits on or runs off the end of.
    """
    if not candidates:
        raise ConfigError(f"manifest {manifest} has no examples{where}")
    for line in candidates:
        with LEDGER.lock:
            if (manifest, line) in LEDGER.good:
                return
        if load_example(manifest, lines, line, resolution, num_frames) is not None:
            with LEDGER.lock:
                LEDGER.good.add((manifest, line))
            return
    with LEDGER.lock:
        found = collections.Counter(LEDGER.bad[(manifest, k)] for k in candidates)
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(found.items()))
    raise ConfigError(
        f"manifest {manifest} has no usable example{where}: all {len(candidates)} lines are "
        f"bad ({reasons}); see the warnings above")
