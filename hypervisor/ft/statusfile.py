"""A node's status file (RUN_DIR/NAME.status.json, read by `ftvm status`, the tests and
the bench), written on a thread of its own.

The I/O thread takes the status under the node's lock every 200 ms and hands it over
here; the JSON encoding, the write and the rename happen on this thread. On the I/O
thread they held up the acknowledgements and releases queued behind them: a rename
can take milliseconds on a busy disk, and one output in a hundred was waiting there.
Only the newest status is written: one that comes while the last is still being
written replaces the one waiting.
"""
from __future__ import annotations

import json
import os
import threading


class StatusFile:
    def __init__(self, path: str):
        self.path = path
        self._waiting = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ftvm-status", daemon=True)
        self._thread.start()

    def put(self, status: dict):
        """Write ``status`` soon (it replaces one still waiting)."""
        with self._cond:
            self._waiting = status
            self._cond.notify()

    def close(self, final: dict | None = None):
        """Stop the thread; then write ``final``, if given, before returning."""
        with self._cond:
            self._closed = True
            self._waiting = None
            self._cond.notify()
        self._thread.join(timeout=5)
        if final is not None:
            self._write(final)

    def _run(self):
        while True:
            with self._cond:
                while self._waiting is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                status, self._waiting = self._waiting, None
            self._write(status)

    def _write(self, status: dict):
        tmp = self.path + ".tmp"
        try:
            data = json.dumps(status)
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except (OSError, TypeError, ValueError):
            pass
