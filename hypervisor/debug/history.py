"""What the debugger's timeline keeps of a replay: the log's records decoded once and
held in memory (``ListSource``, read by any number of replayers through ``_Cursor``s,
so a restore continues at any record), the checkpoints (``Checkpoint``: a snapshot's
head and its memory in chunks shared with the neighbouring checkpoints), and the
console sink that prints each byte once however often the past is re-executed.
"""
from __future__ import annotations

import dataclasses

from logging_channel.logfile import LogReader, scan

from ..errors import LogTruncated


@dataclasses.dataclass(frozen=True, order=True)
class Point:
    """An execution point: a block count, and instructions into the next block."""
    blocks: int
    insns: int = 0

    def __str__(self):
        return f"{self.blocks}" if not self.insns else f"{self.blocks}+{self.insns}"


MEM_CHUNK = 1 << 20          # checkpoints share the memory chunks that did not change


@dataclasses.dataclass
class Checkpoint:
    point: Point
    events: int
    meta: bytes                # the snapshot's head and state, then its memory in chunks:
    chunks: list               # equal chunks of neighbouring checkpoints are one object
    log_pos: int
    ev: object
    tsc_words: list
    rng: list
    rp_state: tuple
    temporary: bool = False
    regions: list = dataclasses.field(default_factory=list)   # [[start, size]] of its memory, in order

    def read(self, addr, n):
        """Guest bytes [addr, addr + n) as they were here; None if any is unmapped."""
        off = 0
        for start, size in self.regions:
            if start <= addr and addr + n <= start + size:
                a = off + addr - start
                out = b""
                while len(out) < n:
                    i, j = divmod(a + len(out), MEM_CHUNK)
                    out += bytes(self.chunks[i][j:j + n - len(out)])
                return out
            off += size
        return None


class ListSource:
    """The log's records, decoded once and kept in memory, so that a restore can
    continue reading at any record."""

    streaming = False

    def __init__(self, path):
        self.path = str(path)
        _, _, cut = scan(path)
        self.cut = cut
        reader = LogReader(path)
        self.records = []
        try:
            for item in reader:
                self.records.append(item[2])
        except LogTruncated as e:
            self.cut = e
        self.pos = 0

    def next(self):
        if self.pos >= len(self.records):
            return None
        rec = self.records[self.pos]
        self.pos += 1
        return rec

    def end_error(self):
        return self.cut or LogTruncated(self.path, len(self.records), 0, "the log has no end record")

    @property
    def records_read(self):
        return self.pos


class _Cursor:
    """One Replayer's view of the shared record list, from a position."""

    streaming = False

    def __init__(self, src: ListSource, pos: int):
        self.src, self.pos, self.path = src, pos, src.path

    def next(self):
        if self.pos >= len(self.src.records):
            return None
        rec = self.src.records[self.pos]
        self.pos += 1
        return rec

    def end_error(self):
        return self.src.end_error()

    @property
    def records_read(self):
        return self.pos


class HighWaterSink:
    """Console output reaches stdout once: re-executing the past prints nothing."""

    def __init__(self, write):
        self.write, self.printed, self.console = write, 0, None

    def __call__(self, data):
        end = self.console.total
        start = end - len(data)
        if end > self.printed:
            self.write(bytes(data[max(0, self.printed - start):]))
            self.printed = end
