"""Runs of whole log frames as they travel in a LOG message: one buffer, checked in one C
call (codec.c: framing and CRC32 of every frame), then handed around as a view.

A backup takes tens of thousands of frames a second. Checking each in Python (a struct
unpack, a slice, two zlib calls) and keeping each as its own bytes object cost about a
quarter of a core at redis-benchmark rates; a `Frames` is one buffer and the offsets of
its frames, sliced without copying, joined by one slice, and decoded on the replaying
thread without checking the CRC again (``records.decode_checked``).
"""
from __future__ import annotations

import array

from . import records as R
from ._codec import ffi, lib

_VERSIONS = sum(1 << v for v in R.READABLE_VERSIONS)
_KINDS = sum(1 << k for k in R.KIND_NAMES)
assert max(R.READABLE_VERSIONS) < 32 and max(R.KIND_NAMES) < 32


class Frames:
    """Frames [lo, hi) of ``blob``; ``offs`` holds every frame's start and the end.
    Behaves as a sequence of frames (bytes) for ``len``, slicing and iteration."""

    __slots__ = ("blob", "offs", "lo", "hi")

    def __init__(self, blob, offs, lo=0, hi=None):
        self.blob, self.offs, self.lo = blob, offs, lo
        self.hi = len(offs) - 1 if hi is None else hi

    def __len__(self):
        return self.hi - self.lo

    def __bool__(self):
        return self.hi > self.lo

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            assert step == 1, "frames are taken in runs"
            return Frames(self.blob, self.offs, self.lo + lo, self.lo + max(lo, hi))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        o = self.offs
        return bytes(self.blob[o[self.lo + i]:o[self.lo + i + 1]])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def span(self):
        """(start, end) of these frames in ``blob``."""
        return self.offs[self.lo], self.offs[self.hi]

    def join(self) -> bytes:
        """All these frames as one bytes object."""
        a, b = self.span()
        if a == 0 and b == len(self.blob) and type(self.blob) is bytes:
            return self.blob
        return bytes(self.blob[a:b])

    def records(self):
        """Decode each frame (already checked): yields records."""
        blob, o = self.blob, self.offs
        for i in range(self.lo, self.hi):
            yield R.decode_checked(blob, o[i])


def check(blob) -> Frames:
    """Check every frame of ``blob`` (whole frames, back to back). Raises R.FrameError
    naming the first bad frame and why."""
    n_max = len(blob) // R.FRAME.size + 1
    offs = array.array("I", bytes(4 * (n_max + 1)))
    n = lib.ftvm_frames_check(ffi.from_buffer(blob), len(blob), ffi.from_buffer("uint32_t[]", offs), n_max,
                              _VERSIONS, _KINDS, R.BODY_MAX)
    if n < 0:
        bad = -n - 1
        off = offs[bad - 1] + R.FRAME.size + R.FRAME.unpack_from(blob, offs[bad - 1])[2] if bad else 0
        R.check_frame(blob, off)        # raises, naming the reason
        raise R.FrameError(f"frame {bad} at byte {off} fails its checks")
    del offs[n:]
    offs.append(len(blob))
    return Frames(blob, offs)
