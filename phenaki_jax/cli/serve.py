"""phenaki-serve: a story editor web page over a trained transformer (see `server/`).

`phenaki-serve --workdir=DIR2 [--host=127.0.0.1] [--port=8080] [--output_dir=DIR]`
The models are loaded once; stories are generated one at a time in the order asked for and
written to OUTPUT_DIR/stories as phenaki-story writes them.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence

from absl import flags, logging

from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_WORKDIR = flags.DEFINE_string("workdir", None, "Transformer workdir (its checkpoint holds the "
                               "frozen tokenizer).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (127.0.0.1: this "
                            "machine only).")
_PORT = flags.DEFINE_integer("port", 8080, "Port to listen on (0: any free port).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "stories_out", "Where stories and uploads go.")
_COND = flags.DEFINE_integer("cond_frames", 5, "K: frames re-encoded as known tokens (odd).")
_MAX_UPLOAD = flags.DEFINE_float("max_upload_mb", 32.0, "Largest image or video upload, MiB.")
_MAX_QUEUED = flags.DEFINE_integer("max_queued", 16, "Stories waiting at most; more are "
                                   "refused (429) until one is done.")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the models load so that a taken port fails at
    once, in one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host={host}: {e.strerror}") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(f"--host={host} --port={port}: cannot listen there: {e.strerror}") \
            from e
    sock.listen(64)
    return sock


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required")
    if not 0 <= _PORT.value < 65536:
        raise UsageError(f"--port={_PORT.value} must be in [0, 65535]")
    if _MAX_UPLOAD.value <= 0 or _MAX_QUEUED.value < 1:
        raise UsageError("--max_upload_mb must be > 0 and --max_queued >= 1")
    sock = _listen(_HOST.value, _PORT.value)
    logging.set_verbosity(logging.WARNING)  # per-segment timings are not a server's news
    import uvicorn

    from phenaki_jax.server.app import create_app
    from phenaki_jax.server.service import StoryService

    service = StoryService(_WORKDIR.value, _OUTPUT_DIR.value, _COND.value, _MAX_QUEUED.value)
    app = create_app(service, int(_MAX_UPLOAD.value * 2**20))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"phenaki-serve: the story editor is at http://{shown}:{port}/ "
                     f"(stories in {service.output_dir}); Ctrl-C stops it\n")
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def run() -> None:
    from phenaki_jax.checkpoint import CheckpointError
    from phenaki_jax.inference.story_io import StoryError

    run_command("phenaki-serve", main, (StoryError, CheckpointError))


if __name__ == "__main__":
    run()
