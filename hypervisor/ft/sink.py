"""The primary's log on its way to the backup: every record goes to the local log file
and is kept, as runs of whole frames, until the backup acknowledges it.

Records come one at a time (encoded in Python) or as a buffer of whole frames made in
C (fastpath.c: the clock reads and socket calls run in the syscall hook). A buffer is
kept as one run (logging_channel.frames: its offsets found in one C call), not split
into a bytes object per frame: a busy server logs five records a request, and the
split cost the primary's emulation thread about as much as encoding them did.

Threads: the emulation thread appends (without the node's lock); everything else runs
under the node's lock, on either thread. Appends only ever add runs at the right end,
so readers work on a copy of the run list (one atomic step under the GIL).
"""
from __future__ import annotations

import array
import collections

from logging_channel import frames as F
from logging_channel import records as R
from logging_channel.logfile import LogWriter


class FtSink:
    def __init__(self, writer: LogWriter):
        self.writer = writer
        self.records = writer.records
        self.runs = collections.deque()    # runs of frames: records [base, records), not yet acknowledged
        self.base = writer.records
        self.sent = writer.records         # records before this index have been sent once
        self.bytes = 0                     # bytes of the runs kept

    def append(self, rec):
        frame = R.encode(rec)
        self.writer.append_frames(frame, 1)
        self._keep(F.Frames(frame, array.array("I", (0, len(frame)))), len(frame))

    def append_frames(self, frames: bytes, count: int):
        """Whole frames encoded elsewhere (system calls recorded in C)."""
        self.writer.append_frames(frames, count)
        run = F.check(frames)
        assert len(run) == count, f"{len(run)} frames in a buffer said to hold {count}"
        self._keep(run, len(frames))

    def _keep(self, run, size):
        self.runs.append(run)
        self.bytes += size
        self.records += len(run)

    def flush(self):
        self.writer.flush()

    def reset(self, index):
        """Keep nothing before record ``index`` (all of it is elsewhere: a state transfer)."""
        self.runs, self.base, self.sent, self.bytes = collections.deque(), index, index, 0

    def unsent_bytes(self):
        """Bytes of the records from ``sent`` on."""
        total, end = 0, self.records
        for run in reversed(list(self.runs)):
            first = end - len(run)
            if end <= self.sent:
                break
            a, b = run.span()
            if first < self.sent:
                a = run.offs[run.lo + self.sent - first]
            total += b - a
            end = first
        return total

    def acked(self, n):
        """The backup has records before ``n``: forget them."""
        while self.base < n and self.runs:
            run = self.runs[0]
            drop = n - self.base
            a, b = run.span()
            if drop >= len(run):
                self.runs.popleft()
                self.bytes -= b - a
                self.base += len(run)
            else:
                rest = run[drop:]
                self.runs[0] = rest
                self.bytes -= rest.span()[0] - a
                self.base += drop

    def frames_from(self, first, upto, max_bytes=8 << 20):
        """(bytes, count): the frames of records [first, upto) that are kept, at most
        ``max_bytes`` of them (at least one record)."""
        parts, size, index = [], 0, self.base
        for run in list(self.runs):
            n = len(run)
            if index + n <= first:
                index += n
                continue
            if index >= upto:
                break
            take = run[max(0, first - index):min(n, upto - index)]
            a, b = take.span()
            if size + (b - a) > max_bytes:
                # Part of this run, frame by frame, as far as the limit goes (and one
                # record at least: a first run over the limit went whole).
                k = take.lo
                while k < take.hi and size + take.offs[k + 1] - a <= max_bytes:
                    k += 1
                if k == take.lo and not parts:
                    k += 1
                if k > take.lo:
                    parts.append(take[:k - take.lo])
                break
            parts.append(take)
            size += b - a
            index += n
            if size >= max_bytes:
                break
        count = sum(len(p) for p in parts)
        return b"".join(p.join() for p in parts), count
