"""The Python that tf.data calls (rendering, decoding), kept quiet at interpreter exit."""

from __future__ import annotations

import atexit
import threading
import time


class PythonGate:
    """Lets the Python that tf.data calls (rendering, decoding) go quiet before the interpreter
    shuts down.

    tf.data threads call `render` through `tf.numpy_function` in the background, ahead of
    demand. A process that exits with a live iterator (say a training loop's) then races: a
    worker thread that wants the GIL after Python starts finalizing never gets it, and the
    iterator's destructor waits for it forever. At exit this gate turns `render` into a no-op
    returning a blank example, then waits until no call has run for a moment, so the buffers
    are full and the threads idle before finalization.
    """

    def __init__(self) -> None:
        self.closed = False
        self.used = False
        self.in_flight = 0
        self.last_call = 0.0
        self.lock = threading.Lock()

    def enter(self) -> bool:
        with self.lock:
            self.used = True
            self.in_flight += 1
            return not self.closed

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.last_call = time.monotonic()

    def close(self, idle_seconds: float = 0.05, timeout_seconds: float = 2.0) -> None:
        self.closed = True
        if not self.used:
            return
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self.lock:
                quiet = not self.in_flight and time.monotonic() - self.last_call > idle_seconds
            if quiet:
                return
            time.sleep(0.005)


PYTHON_GATE = PythonGate()
atexit.register(PYTHON_GATE.close)
