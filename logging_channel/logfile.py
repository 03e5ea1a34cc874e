"""Log files: the writer and the reader, side by side (as rr keeps them).

The writer appends whole frames. It collects them in a buffer and hands them to the
OS when 64 KiB have gathered, 50 ms after the oldest one, and whenever the recorder
releases output or waits (``flush``), so a recorder that is killed leaves every record
that covers output it let out. It fsyncs on close and at least every
``sync_interval_s``; ``close()`` is what makes a log complete, and it is called on
Ctrl-C too.
"""
from __future__ import annotations

import errno
import os
import time

from hypervisor.errors import IoFailure, LogDamaged, LogTruncated

from . import records as R

READ_CHUNK = 1 << 20


class LogWriter:
    def __init__(self, path, sync_interval_s: float = 1.0):
        self.path = str(path)
        self.records = 0
        self.bytes = 0
        self._sync_interval_s = sync_interval_s
        self._last_sync = time.monotonic()
        self._buf = bytearray()
        self._buf_since = 0.0
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise IoFailure(f"{self.path}: cannot create log: {e.strerror}") from None
        self._write(R.FILE_MAGIC)

    def _write(self, data: bytes):
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as e:
                hint = " (disk full)" if e.errno == errno.ENOSPC else ""
                raise IoFailure(f"{self.path}: cannot write log at byte {self.bytes}: {e.strerror}{hint}") from None
            view = view[n:]
            self.bytes += n

    BUFFER_BYTES = 64 << 10
    BUFFER_S = 0.05

    def append(self, rec) -> int:
        """Write one record; returns its frame size in bytes."""
        frame = R.encode(rec)
        self._buffer(frame)
        self.records += 1
        return len(frame)

    def append_frames(self, frames: bytes, count: int):
        """Write frames encoded elsewhere (the backup writes what the channel carried)."""
        self._buffer(frames)
        self.records += count

    def _buffer(self, data):
        buf = self._buf
        if len(data) >= self.BUFFER_BYTES:
            # A big batch (the syscall hook's frames: file reads of many KiB) goes
            # straight to the OS, after what waits, without two more copies.
            self.flush()
            self._write(data)
            return
        if not buf:
            self._buf_since = time.monotonic()
        buf += data
        if len(buf) >= self.BUFFER_BYTES or time.monotonic() - self._buf_since >= self.BUFFER_S:
            self.flush()

    def flush(self):
        """Hand the buffered frames to the OS (and fsync if one is due)."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._write(data)
        if time.monotonic() - self._last_sync >= self._sync_interval_s:
            self.sync()

    def sync(self):
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._write(data)
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise IoFailure(f"{self.path}: cannot sync log: {e.strerror}") from None
        self._last_sync = time.monotonic()

    def close(self):
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None


class LogReader:
    """Iterates a log's records, checking each. Yields (index, offset, record).

    Raises LogDamaged for a record that fails a check and LogTruncated when the file
    ends inside a record. A log that simply has no END record is whole as far as it
    goes; ``complete`` says whether the END was seen."""

    def __init__(self, path):
        self.path = str(path)
        self.complete = False
        self.bytes_read = 0
        self.records_read = 0
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise IoFailure(f"{self.path}: cannot open log: {e.strerror}") from None
        magic = self._f.read(len(R.FILE_MAGIC))
        if magic != R.FILE_MAGIC:
            if len(magic) < len(R.FILE_MAGIC) and R.FILE_MAGIC.startswith(magic):
                raise LogTruncated(self.path, 0, 0, "the file ends inside the log's magic bytes")
            raise LogDamaged(self.path, 0, 0, "not an ftvm log (bad magic bytes)")
        self.header = None

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        buf = bytearray()
        pos = 0                          # position of buf[0] in the file
        offset = len(R.FILE_MAGIC)
        pos = offset
        index = 0
        eof = False
        while True:
            start = offset - pos
            try:
                rec, size = R.decode(buf, start)
            except R.FrameError as e:
                if e.truncated and not eof:
                    chunk = self._f.read(READ_CHUNK)
                    if not chunk:
                        eof = True
                    del buf[:start]
                    pos = offset
                    buf += chunk
                    continue
                if e.truncated:
                    if start == len(buf):
                        return           # a clean end between records
                    raise LogTruncated(self.path, index, offset, e.reason) from None
                raise LogDamaged(self.path, index, offset, e.reason) from None
            if index == 0 and rec.kind != R.HEADER:
                raise LogDamaged(self.path, 0, offset, f"first record is {R.KIND_NAMES[rec.kind]}, expected header")
            if index > 0 and rec.kind == R.HEADER:
                raise LogDamaged(self.path, index, offset, "a second header record")
            if self.complete:
                raise LogDamaged(self.path, index, offset, "a record after the end record")
            if rec.kind == R.HEADER:
                self.header = rec
            if rec.kind == R.END:
                self.complete = True
            yield index, offset, rec
            index += 1
            offset += size
            self.bytes_read = offset
            self.records_read = index


def read_header(path) -> R.Header:
    with LogReader(path) as r:
        for _, _, rec in r:
            return rec
    raise LogTruncated(str(path), 0, len(R.FILE_MAGIC), "no header record")


def scan(path):
    """Check every frame's framing and CRC, and decode every body (a record with a valid
    CRC can still be malformed: written by a buggy or hostile writer): a pass that lets
    replay refuse a damaged log before running anything, so before any output.

    Returns (records, complete, cut) where ``cut`` is the LogTruncated a replay will
    meet at the end (None when the log ends cleanly after whole records). Raises
    LogDamaged for the first damaged frame."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise IoFailure(f"{path}: cannot open log: {e.strerror}") from None
    if data[:len(R.FILE_MAGIC)] != R.FILE_MAGIC:
        if len(data) < len(R.FILE_MAGIC) and R.FILE_MAGIC.startswith(data):
            return 0, False, LogTruncated(path, 0, 0, "the file ends inside the log's magic bytes")
        raise LogDamaged(path, 0, 0, "not an ftvm log (bad magic bytes)")
    off, index, complete = len(R.FILE_MAGIC), 0, False
    while off < len(data):
        if complete:
            raise LogDamaged(path, index, off, "data after the end record")
        try:
            R.check_frame(data, off)
        except R.FrameError as e:
            if e.truncated:
                return index, False, LogTruncated(path, index, off, e.reason)
            raise LogDamaged(path, index, off, e.reason) from None
        try:
            R.decode(data, off)
        except R.FrameError as e:
            raise LogDamaged(path, index, off, e.reason) from None
        _, kind, length, _ = R.FRAME.unpack_from(data, off)
        complete = kind == R.END
        off += R.FRAME.size + length
        index += 1
    return index, complete, None
