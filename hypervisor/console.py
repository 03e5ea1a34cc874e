"""Console output (port 0xE9): counted, checksummed, and handed to a sink in chunks."""
from __future__ import annotations

import os
import zlib


class Console:
    """Collects guest console bytes. ``flush`` hands what is buffered to ``sink``
    (a callable taking bytes); the default sink writes to a file descriptor."""

    FLUSH_BYTES = 4096

    def __init__(self, sink=None):
        self.total = 0
        self.crc = 0
        self._buf = bytearray()
        self._sink = sink

    def put(self, byte: int):
        self._buf.append(byte)
        self.total += 1
        if byte == 0x0A or len(self._buf) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self):
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        self.crc = zlib.crc32(data, self.crc)
        if self._sink is not None:
            self._sink(data)

    def summary(self):
        """(bytes, crc32) of everything put so far (flushes first)."""
        self.flush()
        return self.total, self.crc


def fd_sink(fd: int):
    def write(data: bytes):
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BrokenPipeError:
                return          # nobody reads the console any more; the run goes on
            view = view[n:]
    return write
