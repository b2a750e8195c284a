"""The inputs `phenaki-prepare` reads, as shards of items.

An input is one of:

* an img2dataset or video2dataset output directory: WebDataset tars `{shard}.tar` whose
  members `{key}.{jpg,png,webp,mp4,...}`, `{key}.txt` (the caption) and `{key}.json` sit
  together, with `{shard}.parquet` (one row per sample the downloader tried, `status` saying
  whether it succeeded) and `{shard}_stats.json`, which the downloader writes last: a tar
  without it is an unfinished download and is skipped, counted as `unfinished_shard`;
* a LAION-style `.parquet` of `URL` and `TEXT` (lower-case `url` / `caption` / `text` too),
  URLs being local media paths (relative to the table's folder);
* a WebVid-style `.csv` (`videoid,name,page_dir,duration,contentUrl`: `name` is the caption;
  the media is `contentUrl` when it is a local file, else `{page_dir}/{videoid}.mp4` beside the
  table);
* a Panda-70M-style `.csv` clip table (`videoID,url,timestamp,caption,...`: one row per source
  video, `timestamp` a list of `[start, end]` times and `caption` the list of their captions,
  both as Python literals; the media is `url` when it is a local file, else `{videoID}.mp4`
  beside the table);
* a JSONL manifest (`phenaki_jax.data.manifests`' lines).

Tables are cut into shards of `rows_per_shard` rows; a tar is a shard. An item is one sample:
its media (bytes from a tar, or a path), its key, the name of its source (what the
validation split is decided by) and its caption segments.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import json
import os
import tarfile
from collections.abc import Iterator

import numpy as np

from phenaki_jax import storage
from phenaki_jax.data import manifest_lines
from phenaki_jax.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

WEBDATASET, LAION, WEBVID, PANDA, JSONL = "webdataset", "laion", "webvid", "panda", "jsonl"
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
WEBVID_COLUMNS = ("videoid", "name", "page_dir", "duration", "contentUrl")
PANDA_COLUMNS = ("videoID", "url", "timestamp", "caption")


class PrepareError(ValueError):
    """An input or output `phenaki-prepare` cannot use at all; the message names it."""


@dataclasses.dataclass(frozen=True)
class InputShard:
    """One unit of preparation: a tar, or rows [start, stop) of a table. In a text table
    (CSV, JSONL) row `start` begins at byte `offset`, so a shard reads only its own rows."""
    name: str
    format: str
    path: str
    start: int = 0
    stop: int = 0
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class Segment:
    """A caption (raw bytes: its encoding is checked later) and the span of the source it
    describes, in seconds (None: from the start / to the end)."""
    caption: bytes
    start: float | None = None
    end: float | None = None


@dataclasses.dataclass(frozen=True)
class Item:
    key: str
    source: str
    kind: str  # "image" or "video"
    segments: tuple[Segment, ...]
    media: bytes | None = None
    path: str | None = None
    context_frames: int = 0


@dataclasses.dataclass(frozen=True)
class Skip:
    """A sample that cannot be used: `reason` is counted in the report, `detail` logged."""
    reason: str
    detail: str
    count: int = 1


def kind_of(ext: str) -> str | None:
    """"image", "video" or None for a file extension (with its dot)."""
    ext = ext.lower()
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def detect_format(path: str) -> str:
    """The input's format, from what it is; a one-line PrepareError if none fits."""
    if storage.isdir(path):
        if any(name.endswith(".tar") for name in _listdir(path)):
            return WEBDATASET
        raise PrepareError(f"--input={path} is a directory without WebDataset .tar shards "
                           "(img2dataset / video2dataset output)")
    if not storage.isfile(path):
        raise PrepareError(f"--input={path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        return LAION
    if ext in (".jsonl", ".json"):
        return JSONL
    if ext == ".csv":
        header = set(_csv_header(path))
        if {"videoid", "name", "contentUrl"} <= header:
            return WEBVID
        if {"videoID", "timestamp", "caption"} <= header:
            return PANDA
        raise PrepareError(f"--input={path}: a CSV with neither WebVid's columns "
                           f"({', '.join(WEBVID_COLUMNS)}) nor Panda-70M's "
                           f"({', '.join(PANDA_COLUMNS)})")
    raise PrepareError(f"--input={path}: not a directory, .parquet, .csv or .jsonl")


def _listdir(path: str) -> list[str]:
    return sorted(p.name for p in storage.path(path).iterdir())


def _csv_header(path: str) -> list[str]:
    with storage.open_file(path) as f:
        first = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="").readline()
    return next(csv.reader([first]), [])


def plan(path: str, rows_per_shard: int) -> tuple[list[InputShard], list[str]]:
    """(shards to prepare, names of unfinished input shards) of the input `path`."""
    fmt = detect_format(path)
    if fmt == WEBDATASET:
        names = _listdir(path)
        shards, unfinished = [], []
        for name in names:
            if not name.endswith(".tar"):
                continue
            stem = name[: -len(".tar")]
            if f"{stem}_stats.json" in names:
                shards.append(InputShard(stem, fmt, storage.join(path, name)))
            else:
                unfinished.append(stem)
        return shards, unfinished
    stem = os.path.splitext(os.path.basename(path))[0]
    if fmt == LAION:
        import pyarrow.parquet as pq

        with storage.open_file(path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        starts = [(i, 0) for i in range(0, rows, rows_per_shard)]
    else:
        starts, rows = _text_shard_starts(path, rows_per_shard, fmt != JSONL)
    return [InputShard(f"{stem}-{i // rows_per_shard:05d}", fmt, path, i,
                       min(i + rows_per_shard, rows), offset) for i, offset in starts], []


def _text_shard_starts(path: str, rows_per_shard: int, is_csv: bool
                       ) -> tuple[list[tuple[int, int]], int]:
    """One pass over a text table: (row, byte offset) of every `rows_per_shard`-th row, and the
    row count. A CSV's header is not a row, and a row continues over line breaks inside
    quotes (an odd number of quote characters so far); a JSONL row is a line."""
    starts, rows, position, row_start, quoted, header = [], 0, 0, 0, False, is_csv
    with storage.open_file(path) as f:
        for line in f:
            if not quoted:
                row_start = position
            position += len(line)
            if is_csv and line.count(b'"') % 2:
                quoted = not quoted
            if quoted:
                continue
            if header:
                header = False
                continue
            if rows % rows_per_shard == 0:
                starts.append((rows, row_start))
            rows += 1
    return starts, rows


def read_shard(shard: InputShard) -> Iterator[Item | Skip]:
    """The items of one input shard, and a `Skip` for each sample that is unusable as read."""
    if shard.format == WEBDATASET:
        yield from _read_tar(shard.path)
    elif shard.format == JSONL:
        yield from _read_jsonl(shard)
    else:
        yield from _read_table(shard)


def _read_tar(path: str) -> Iterator[Item | Skip]:
    """A WebDataset tar: members grouped by key (the name before its first dot)."""
    seen: set[str] = set()
    group: dict[str, bytes] = {}
    key = None
    yield from _download_failures(path)
    try:
        with storage.open_file(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                stem, _, ext = base.partition(".")
                if stem != key:
                    if key is not None:
                        yield from _some(_tar_item(path, key, group, seen))
                    key, group = stem, {}
                data = tar.extractfile(member)
                content = data.read() if data is not None else b""
                if len(content) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                group["." + ext.lower()] = content
    except (tarfile.TarError, EOFError, OSError) as e:
        where = f" after key {key}" if key is not None else ""
        yield Skip("corrupt_archive", f"{path}: unreadable{where}: {e}")
        return
    if key is not None:
        yield from _some(_tar_item(path, key, group, seen))


def _some(value: Item | Skip | None) -> Iterator[Item | Skip]:
    if value is not None:
        yield value


def _tar_item(path: str, key: str, group: dict[str, bytes], seen: set[str]
              ) -> Item | Skip | None:
    if key in seen:
        return Skip("duplicate_key", f"{path}: key {key} appears twice")
    seen.add(key)
    media = [ext for ext in group if ext in MEDIA_EXTENSIONS]
    meta = _json_or_empty(group.get(".json", b""))
    if not media:
        if meta.get("status") not in (None, "success"):
            return None  # a failed download (video2dataset keeps its metadata): counted once
        return Skip("missing_media", f"{path}: key {key} has no image or video member")
    ext = media[0]
    caption = group.get(".txt")
    if caption is None:
        caption = str(meta.get("caption") or "").encode()
    source = str(meta.get("url") or f"{os.path.basename(path)}/{key}")
    return Item(key=key, source=source, kind=kind_of(ext) or "image",
                segments=(Segment(caption),), media=group[ext])


def _json_or_empty(data: bytes) -> dict:
    try:
        value = json.loads(data.decode("utf-8")) if data else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _download_failures(tar_path: str) -> Iterator[Skip]:
    """The downloader's own failures, from the shard's status table (counted, not retried)."""
    table = tar_path[: -len(".tar")] + ".parquet"
    if not storage.isfile(table):
        return
    import pyarrow.parquet as pq

    try:
        with storage.open_file(table) as f:
            status = pq.read_table(f, columns=["status"]).column("status").to_pylist()
    except Exception:  # noqa: BLE001 - a damaged status table only loses this count
        return
    failed = sum(1 for s in status if s != "success")
    if failed:
        yield Skip("not_downloaded", f"{table}: {failed} samples failed to download", failed)


def _shard_lines(shard: InputShard) -> Iterator[tuple[int, bytes]]:
    """(row number, line) of a JSONL shard's rows, read from its byte offset on."""
    with storage.open_file(shard.path) as f:
        f.seek(shard.offset)
        for n, line in zip(range(shard.start, shard.stop), f, strict=False):
            yield n, line.rstrip(b"\r\n")


def _read_jsonl(shard: InputShard) -> Iterator[Item | Skip]:
    folder = os.path.dirname(shard.path)
    for n, line in _shard_lines(shard):
        if not line.strip():
            continue
        try:
            kind, path, text, context = manifest_lines.parse_line(line, folder, 11)
        except manifest_lines.BadExample as e:
            yield Skip("empty_caption" if e.reason == "empty_text" else "malformed_row",
                       f"{shard.path}:{n + 1}: {e.detail}")
            continue
        yield Item(key=f"line{n + 1:08d}", source=path, kind=kind,
                   segments=(Segment(text.encode()),), path=path, context_frames=context)


def _table_rows(shard: InputShard) -> Iterator[tuple[int, dict]]:
    """(row number, row) of a table shard: a parquet's row groups holding its rows, or a
    CSV's rows from the shard's byte offset on."""
    if shard.format == LAION:
        import pyarrow.parquet as pq

        with storage.open_file(shard.path) as f:
            parquet = pq.ParquetFile(f)
            sizes = np.asarray([parquet.metadata.row_group(g).num_rows
                                for g in range(parquet.metadata.num_row_groups)])
            ends = np.cumsum(sizes)
            begins = ends - sizes
            groups = np.nonzero((ends > shard.start) & (begins < shard.stop))[0].tolist()
            table = parquet.read_row_groups(groups).slice(
                shard.start - int(begins[groups[0]]), shard.stop - shard.start)
        for i, row in enumerate(table.to_pylist()):
            yield shard.start + i, row
        return
    header = _csv_header(shard.path)
    with storage.open_file(shard.path) as f:
        f.seek(shard.offset)
        reader = csv.DictReader(io.TextIOWrapper(f, "utf-8", "surrogateescape", ""),
                                fieldnames=header)
        yield from zip(range(shard.start, shard.stop), reader, strict=False)


def _local_media(folder: str, *candidates: str | None) -> str | None:
    for candidate in candidates:
        if candidate and (candidate.startswith("gs://") or "://" not in candidate):
            path = storage.join_under(folder, candidate)
            if storage.isfile(path):
                return path
    return None


def _caption_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    # CSV text was read with surrogateescape: invalid UTF-8 comes back as its original bytes.
    return str(value).encode("utf-8", "surrogateescape")


def _read_table(shard: InputShard) -> Iterator[Item | Skip]:
    folder = os.path.dirname(shard.path)
    seen: set[str] = set()
    for n, row in _table_rows(shard):
        where = f"{shard.path} row {n + 1}"
        if shard.format == LAION:
            url = row.get("URL", row.get("url"))
            caption = row.get("TEXT", row.get("caption", row.get("text")))
            path = _local_media(folder, url)
            key = str(row.get("key") or f"{n:09d}")
            source = str(url)
            kind = kind_of(os.path.splitext(source)[1]) or "image"
            segments = (Segment(_caption_bytes(caption)),)
        elif shard.format == WEBVID:
            vid, page = row.get("videoid") or "", row.get("page_dir") or ""
            path = _local_media(folder, row.get("contentUrl"), f"{page}/{vid}.mp4",
                                f"{vid}.mp4")
            key, source, kind = vid, vid, "video"
            segments = (Segment(_caption_bytes(row.get("name"))),)
        else:
            vid = row.get("videoID") or ""
            path = _local_media(folder, row.get("url"), f"{vid}.mp4")
            key, source, kind = vid, vid, "video"
            try:
                segments = _panda_segments(row)
            except ValueError as e:
                yield Skip("malformed_row", f"{where}: {e}")
                continue
        if key in seen:
            yield Skip("duplicate_key", f"{where}: key {key!r} appears twice")
            continue
        seen.add(key)
        if path is None:
            yield Skip("missing_media", f"{where}: no local media file for {key!r}")
            continue
        yield Item(key=key, source=source, kind=kind, segments=segments, path=path)


def _seconds(stamp: str) -> float:
    """'H:MM:SS.mmm' (or plain seconds) -> seconds."""
    parts = [float(p) for p in str(stamp).split(":")]
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


def _panda_segments(row: dict) -> tuple[Segment, ...]:
    """A Panda-70M row's spans and captions, parsed as literals (never evaluated)."""
    try:
        spans = ast.literal_eval(row.get("timestamp") or "")
        captions = ast.literal_eval(row.get("caption") or "")
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"timestamp/caption are not lists: {e}") from e
    if not isinstance(spans, list) or not isinstance(captions, list) \
            or len(spans) != len(captions):
        raise ValueError("timestamp and caption must be lists of the same length")
    out = []
    for span, caption in zip(spans, captions, strict=True):
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ValueError(f"timestamp {span!r} is not a [start, end] pair")
        start, end = _seconds(span[0]), _seconds(span[1])
        if not end > start >= 0:
            raise ValueError(f"timestamp {span!r} is not an increasing span")
        out.append(Segment(_caption_bytes(caption), start, end))
    return tuple(out)
