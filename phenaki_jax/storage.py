"""Every file the project reads or writes, on local disk or on Google Cloud Storage (gs://).

Paths are strings; a `gs://bucket/...` path is remote, anything else is local. Remote I/O goes
through `etils.epath` on gcsfs, and orbax writes checkpoints through epath and tensorstore, so
one set of environment variables steers every layer. They are set when this module loads,
before any gs:// access (each library reads them lazily):

- `EPATH_USE_TF=false`: epath uses gcsfs, not TensorFlow's filesystem, which cannot be pointed
  at another endpoint; the project never hands a gs:// path to TensorFlow.
- `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`: gcsfs's bucket-layout probe costs a control-plane
  call per bucket and fails (noisily) on anything but production GCS.
- `STORAGE_EMULATOR_HOST=http://HOST:PORT` (the variable Google's client libraries read): gcsfs
  honours it; tensorstore gets the same endpoint through `TENSORSTORE_GCS_HTTP_URL` and a test
  token, unless those are set already.

GCS objects cannot be appended to or renamed, so a file that grows (metrics, TensorBoard events)
is staged in a local directory and uploaded whole by `Mirror.sync`, and `atomic_path` writes a
local temporary file and uploads it once complete (an upload is atomic). The first remote
access to a bucket probes it with a deadline: an unreachable or missing bucket is one line
(`StorageError`), never a hang on retries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from typing import IO, Any

from etils import epath

REMOTE_SCHEMES = ("gs://",)
# Seconds the first access to a bucket may take before the run gives up on it.
PROBE_TIMEOUT_S = float(os.environ.get("PHENAKI_STORAGE_TIMEOUT_S", "20"))


class StorageError(OSError):
    """A path cannot be read or written; the message is one line naming it."""


def environment_defaults(environ: MutableMapping[str, str]) -> dict[str, str]:
    """The variables (not already in `environ`) that point every layer's gs:// I/O at one
    endpoint; see the module docstring."""
    wanted = {"EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    emulator = environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator:
        url = emulator if "://" in emulator else f"http://{emulator}"
        wanted["TENSORSTORE_GCS_HTTP_URL"] = url.rstrip("/")
        wanted["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"
    return {k: v for k, v in wanted.items() if k not in environ}


os.environ.update(environment_defaults(os.environ))
# gcsfs logs a traceback per retry; the failure itself reaches the caller as one exception.
logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def resolve(path: str) -> str:
    """An absolute local path, or the remote path unchanged."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    return os.path.join(str(path), *parts)


def join_under(directory: str, relative: str) -> str:
    """`relative` read against `directory` (a remote or absolute `relative` stays as it is);
    normalised on disk, where `os.path.normpath` would break a `gs://` prefix."""
    if is_remote(relative) or os.path.isabs(relative):
        return relative
    if is_remote(directory):
        return join(directory, relative)
    return os.path.normpath(os.path.join(directory, relative))


def bucket_of(path: str) -> str:
    scheme, rest = str(path).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


@functools.cache
def _probe(bucket: str) -> None:
    outcome: list[Any] = []

    def probe() -> None:
        try:
            outcome.append(epath.Path(bucket).exists())
        except Exception as e:  # noqa: BLE001 - reported to the caller as one line
            outcome.append(e)

    # A daemon thread: gcsfs may keep retrying after the deadline, and must not hold the
    # process open once the run has given up.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
    where = f" at {endpoint} (STORAGE_EMULATOR_HOST)" if endpoint else ""
    if not outcome:
        raise StorageError(f"cannot reach {bucket}{where}: no answer within "
                           f"{PROBE_TIMEOUT_S:.0f} s")
    if isinstance(outcome[0], BaseException):
        first = str(outcome[0]).strip().splitlines()
        raise StorageError(f"cannot reach {bucket}{where}: "
                           f"{first[0] if first else type(outcome[0]).__name__}")
    if not outcome[0]:
        raise StorageError(f"bucket {bucket} does not exist{where}")


def path(p: str) -> epath.Path:
    """An epath.Path for `p`; a remote bucket is probed (once per process) first."""
    if is_remote(p):
        _probe(bucket_of(p))
    return epath.Path(resolve(p))


def exists(p: str) -> bool:
    return path(p).exists()


def isdir(p: str) -> bool:
    return path(p).is_dir()


def isfile(p: str) -> bool:
    q = path(p)
    return q.exists() and not q.is_dir()


def makedirs(p: str) -> None:
    path(p).mkdir(parents=True, exist_ok=True)


def read_text(p: str) -> str:
    return path(p).read_text(encoding="utf-8")


def read_bytes(p: str) -> bytes:
    return path(p).read_bytes()


def open_file(p: str, mode: str = "rb") -> IO[Any]:
    """A file object for reading (`rb`, `r`); writes go through `atomic_path`."""
    if "r" not in mode or "+" in mode:
        raise ValueError(f"open_file reads only; got mode {mode!r}")
    return path(p).open(mode)


@contextlib.contextmanager
def atomic_path(p: str) -> Iterator[str]:
    """Yields a local temporary path; on success it becomes `p` in one step (a rename beside
    it on local disk, one upload on GCS). On failure `p` is untouched."""
    suffix = os.path.splitext(str(p))[1]
    if is_remote(p):
        path(p)  # an unreachable or missing bucket fails before anything is written
        fd, tmp = tempfile.mkstemp(prefix="phenaki-upload-", suffix=suffix)
    else:
        directory = os.path.dirname(os.path.abspath(p)) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        if is_remote(p):
            epath.Path(tmp).copy(epath.Path(p), overwrite=True)
        else:
            os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(p: str, text: str) -> None:
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def local_copy(p: str) -> Iterator[str]:
    """Yields a local path holding `p`'s bytes (itself when `p` is local), for readers that
    need a file name (video decoders, sentencepiece)."""
    if not is_remote(p):
        yield p
        return
    q = path(p)
    fd, tmp = tempfile.mkstemp(prefix="phenaki-download-", suffix=os.path.splitext(p)[1])
    os.close(fd)
    try:
        q.copy(epath.Path(tmp), overwrite=True)
        yield tmp
    finally:
        os.remove(tmp)


def _cache_path(p: str, cache_root: str | None) -> str:
    root = cache_root or os.path.join(os.path.expanduser("~"), ".cache", "phenaki_jax",
                                      "remote")
    scheme, rest = p.split("://", 1)
    return os.path.join(root, scheme, rest.rstrip("/"))


def _fetch(remote: epath.Path, local: str) -> None:
    """Copies `remote` to `local` unless a file of its size is there already."""
    if os.path.isfile(local) and os.path.getsize(local) == remote.stat().length:
        return
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with atomic_path(local) as tmp:
        remote.copy(epath.Path(tmp), overwrite=True)


def local_file(p: str, cache_root: str | None = None) -> str:
    """A local path with `p`'s bytes: `p` itself when local; a remote file is copied once under
    `cache_root` (default ~/.cache/phenaki_jax/remote) and kept, for readers that need a file
    name (sentencepiece, safetensors)."""
    if not is_remote(p):
        return p
    if not isfile(p):
        raise StorageError(f"{p} is not a file")
    local = _cache_path(p, cache_root)
    _fetch(path(p), local)
    return local


def local_dir(p: str, cache_root: str | None = None) -> str:
    """`local_file` for a directory: every file under it, fetched once."""
    if not is_remote(p):
        return p
    source = path(p)
    if not source.is_dir():
        raise StorageError(f"{p} is not a directory")
    target = _cache_path(p, cache_root)
    pending = [source]
    while pending:  # one listing per directory (epath refuses recursive globs on GCS)
        for child in sorted(pending.pop().iterdir()):
            if child.is_dir():
                pending.append(child)
            else:
                _fetch(child, os.path.join(target, os.path.relpath(str(child), str(source))))
    return target


class Mirror:
    """A local directory whose files are copied to `target` by `sync()`: `target` itself when
    it is local (sync does nothing), a temporary directory when it is remote. Files named in
    `seed` are first downloaded from `target`, so that appending continues them."""

    def __init__(self, target: str, seed: tuple[str, ...] = ()) -> None:
        self.target = resolve(target)
        self.remote = is_remote(target)
        self._uploaded: dict[str, tuple[int, int]] = {}
        if not self.remote:
            os.makedirs(self.target, exist_ok=True)
            self.dir = self.target
            return
        makedirs(self.target)
        self.dir = tempfile.mkdtemp(prefix="phenaki-mirror-")
        for name in seed:
            source = path(join(self.target, name))
            if source.exists():
                source.copy(epath.Path(self.dir) / name, overwrite=True)
                self._uploaded[name] = self._stamp(name)

    def _stamp(self, name: str) -> tuple[int, int]:
        st = os.stat(os.path.join(self.dir, name))
        return st.st_size, st.st_mtime_ns

    def sync(self) -> None:
        """Uploads every file changed since the last sync (whole: GCS cannot append)."""
        if not self.remote:
            return
        for name in sorted(os.listdir(self.dir)):
            if not os.path.isfile(os.path.join(self.dir, name)):
                continue
            stamp = self._stamp(name)
            if self._uploaded.get(name) != stamp:
                epath.Path(self.dir, name).copy(path(join(self.target, name)), overwrite=True)
                self._uploaded[name] = stamp

    def close(self) -> None:
        self.sync()
        if self.remote:
            shutil.rmtree(self.dir, ignore_errors=True)
