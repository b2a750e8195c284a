"""What every command shares: absl flag parsing and one-line errors instead of tracebacks."""

from __future__ import annotations

import difflib
import glob
import logging as std_logging
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping, Sequence

from absl import app, flags
from absl import logging as absl_logging

from phenaki_jax.config import ConfigError
from phenaki_jax.config.parsing import load_config_file
from phenaki_jax.storage import StorageError


class UsageError(ValueError):
    """A bad flag or input file; the message names it."""


def fail(program: str, message: str, code: int = 1) -> None:
    """Prints `program: error: message` as one line on stderr and exits non-zero."""
    first = " ".join(str(message).split())  # one line, whatever the exception carried
    sys.stderr.write(f"{program}: error: {first}\n")
    sys.stderr.flush()
    sys.exit(code)


class _QuietLibraries:
    """Drops INFO records of chatty libraries (orbax logs every file it writes)."""

    # Orbax warns on every read-only open of a checkpoint directory, which is what every
    # inference program does on purpose.
    _EXPECTED = ("read_only=True", "Given directory is read only")

    def filter(self, record: object) -> bool:
        path = getattr(record, "pathname", "")
        if "apache_beam" in path:  # Beam's INFO lines narrate its workers' plumbing
            return getattr(record, "levelno", 0) > 20
        if "orbax" not in path:
            return True
        if getattr(record, "levelno", 0) <= 20:
            return False
        message = str(getattr(record, "msg", ""))
        return not any(e in message for e in self._EXPECTED)


def quiet_libraries() -> None:
    handler = absl_logging.get_absl_handler()
    handler.addFilter(_QuietLibraries())
    std_logging.getLogger().addFilter(_QuietLibraries())


def _without_traceback(message: str) -> str:
    """ml_collections embeds the config file's traceback in its flag error: keep the flag and
    the exception's own last line, which is what names the problem."""
    if "Traceback (most recent call last)" not in message:
        return message
    head = message.split("Traceback (most recent call last)")[0].rstrip(" :\n")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    last = re.sub(r"^[\w.]+\.(\w+: )", r"\1", lines[-1])  # drop the exception's module path
    return f"{head}: {last}"


def unknown_override(argv: Sequence[str]) -> str | None:
    """`unknown config field model.widht (did you mean model.width?)` for the first
    `--config.a.b=v` of `argv` that names no field of the `--config` file's config, or None."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None:
        return None
    path, _, arg = config_arg.partition(":")
    try:
        config = load_config_file(path, arg or None)
    except Exception:  # noqa: BLE001 - the config file's own error is reported as it is
        return None
    for a in argv:
        if not a.startswith("--config.") or "=" not in a:
            continue
        field = a[len("--config."):].split("=", 1)[0]
        node, parts = config, field.split(".")
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                prefix = ".".join(parts[:i])
                close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
                hint = (f" (did you mean {'.'.join([*parts[:i], close[0]])}?)" if close
                        else f" ({prefix or 'the config'} has "
                             f"{', '.join(sorted(map(str, keys))) or 'no fields'})")
                return f"unknown config field {field}{hint}"
            node = node[part]
    return None


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
HUGE_PAGES_OPT_OUT = "PHENAKI_HUGE_PAGES"


def _transparent_huge_pages() -> bool:
    """True when the kernel gives transparent huge pages to memory that asks for them."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def huge_pages_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with so that glibc backs its heap with huge pages, or
    None when that is already so, not possible here, or turned off (PHENAKI_HUGE_PAGES=0).

    Why: XLA:CPU allocates the temporaries of every execution afresh and frees them after it.
    glibc serves those hundreds of MB from mmap and gives them back on free, so the kernel
    zero-fills every 4 KiB page again on the next step: ~200k page faults, a third of the
    6x8x8-token transformer step of benchmarks/compare_peer.py (0.97 -> 0.70 s, 6.2M -> 0.23M
    faults in one bench run). glibc (2.35+) reads this tunable only at process start, hence
    the re-execution; older glibc ignores it.
    """
    if not sys.platform.startswith("linux") or environ.get(HUGE_PAGES_OPT_OUT) == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or platform.libc_ver()[0] != "glibc":
        return None
    if not _transparent_huge_pages():
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return env


# Device files of the accelerators JAX can drive: TPU (v2-v5e: accel, v5p and later: vfio)
# and NVIDIA GPUs.
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def platforms_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """`JAX_PLATFORMS=cpu` added when this machine has no accelerator and the variable is
    unset, or None. Why: libtpu (a dependency, for phenaki-plan and pods) otherwise probes
    for a TPU at every start, printing errors and waiting seconds; compile-only TPU devices
    need no TPU platform."""
    if "JAX_PLATFORMS" in environ or any(glob.glob(p) for p in ACCELERATOR_DEVICES):
        return None
    return {**environ, "JAX_PLATFORMS": "cpu"}


def run(program: str, main: Callable[[Sequence[str]], None],
        expected: tuple[type[BaseException], ...] = (), pass_unknown: bool = False) -> None:
    """`absl.app.run` with flag errors and the `expected` exceptions as one-line errors.

    With `pass_unknown`, flags this program does not define reach `main`'s argv (for options
    another library parses, such as Beam's pipeline options).

    First, once, the process re-executes itself with the same arguments and huge pages for
    glibc's heap (`huge_pages_env`), before JAX or TensorFlow is imported.
    """
    platforms = platforms_env(os.environ)
    if platforms is not None:
        os.environ.update(platforms)
    env = huge_pages_env(os.environ)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
    # TensorFlow (tf.data under seqio) is only our input pipeline: keep its C++ start-up noise
    # (CUDA probing, oneDNN notices) out of the user's terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handled = (UsageError, ConfigError, FileNotFoundError, StorageError, *expected)

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv, known_only=pass_unknown)
        except flags.Error as e:
            fail(program, _without_traceback(str(e)), 2)
        except handled as e:
            fail(program, str(e), 2)
        except Exception as e:  # noqa: BLE001 - e.g. a config file that raises on load
            fail(program, unknown_override(argv) or f"{type(e).__name__}: {e}", 2)
        return []

    def guarded(argv: Sequence[str]) -> None:
        quiet_libraries()
        try:
            main(argv)
        except handled as e:
            fail(program, str(e))

    app.run(guarded, flags_parser=parse)
