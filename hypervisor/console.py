"""Console output (port 0xE9): counted, checksummed, and handed on in chunks.

Bytes collect in a buffer. When a line ends (or the buffer fills), the console either
flushes to its sink at once (replay), or asks its owner to take the bytes at the next
stop (``on_flush_wanted``, set by the recorder, which releases output only at stops).
A backup also keeps the bytes it produced since the observer last confirmed, to send
them again if it goes live (``retain``).
"""
from __future__ import annotations

import os
import zlib


class Console:
    FLUSH_BYTES = 4096

    def __init__(self, sink=None):
        self.total = 0           # bytes the guest has written
        self.crc = 0             # CRC32 of all of them
        self.sink = sink         # callable(bytes), for immediate flushing
        self.on_flush_wanted = None
        self._buf = bytearray()
        self.retain = False      # keep flushed bytes for a possible re-send
        self.retained = bytearray()
        self.retained_from = 0   # console offset of retained[0]

    def put(self, byte: int):
        self._buf.append(byte)
        self.total += 1
        self.crc = zlib.crc32(bytes((byte,)), self.crc)
        if byte == 0x0A or len(self._buf) >= self.FLUSH_BYTES:
            if self.on_flush_wanted is not None:
                self.on_flush_wanted()
            else:
                self.flush()

    def write(self, data: bytes):
        """Many bytes at once (the network output stream); wants a flush at once."""
        self._buf += data
        self.total += len(data)
        self.crc = zlib.crc32(data, self.crc)
        if self.on_flush_wanted is not None:
            self.on_flush_wanted()
        else:
            self.flush()

    def append(self, data: bytes):
        """Bytes written at a stop (a Linux guest's write to stdout or stderr): the
        recorder hands them on at this very stop, so no extra stop is asked for."""
        self._buf += data
        self.total += len(data)
        self.crc = zlib.crc32(data, self.crc)
        if self.on_flush_wanted is None or len(self._buf) >= self.FLUSH_BYTES * 16:
            if self.on_flush_wanted is None:
                self.flush()

    def pending(self) -> bytes:
        return bytes(self._buf)

    def take(self) -> bytes:
        """Everything not yet handed on (the recorder's way of flushing)."""
        data = bytes(self._buf)
        self._buf.clear()
        if self.retain and data:
            self.retained += data
        return data

    def flush(self):
        data = self.take()
        if data and self.sink is not None:
            self.sink(data)

    def confirmed(self, offset: int):
        """The observer has everything before ``offset``: drop it from the retained bytes."""
        drop = min(max(0, offset - self.retained_from), len(self.retained))
        if drop:
            del self.retained[:drop]
            self.retained_from += drop

    def unconfirmed_since(self, offset: int) -> bytes:
        """Retained bytes from console offset ``offset`` on (for a re-send)."""
        start = max(0, offset - self.retained_from)
        return bytes(self.retained[start:]) + bytes(self._buf)

    def unconfirmed_from(self, offset: int):
        """(where they start, bytes): what is kept from ``offset`` on. They start later
        than ``offset`` when bytes before were let go already; labelled from
        ``offset`` anyway, they would reach the observer shifted (seen once: a new
        primary's output began with line 261 of the guest's as if it were line 1)."""
        return max(offset, self.retained_from), self.unconfirmed_since(offset)

    def broken(self):
        """None while the kept and buffered bytes end where the guest's output does (what
        a state transfer and a go-live rely on); else what disagrees."""
        end = self.retained_from + len(self.retained) + len(self._buf)
        if not self.retain or end == self.total:
            return None
        return (f"kept output runs from offset {self.retained_from} to {end}, "
                f"but the guest has written {self.total} bytes")

    def summary(self):
        """(bytes, crc32) of everything written so far."""
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
