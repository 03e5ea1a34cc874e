"""The random-number device (port 0x540): 32 random bits per read.

Record: read the host's os.urandom and log an Rng record at the reading's block count.
Replay: hand out the logged values in order, checking each read happens at the logged
block count.
"""
from __future__ import annotations

import collections
import os

from logging_channel import records as R

from ..errors import Divergence


class RngDevice:
    def __init__(self, mode: str, log_append=None, entropy=os.urandom):
        self.mode = mode
        self._append = log_append
        self._entropy = entropy
        self._queue = collections.deque()

    def read(self, blocks: int, point) -> int:
        if self.mode == "replay":
            if not self._queue:
                raise Divergence(point, "the guest read the random-number device, but the log holds no more values before the next event")
            rec = self._queue.popleft()
            if rec.blocks != blocks:
                raise Divergence(point, f"random-number read after {blocks} blocks, but the log has it after {rec.blocks} blocks")
            return rec.value
        value = int.from_bytes(self._entropy(4), "little")
        self._append(R.Rng(blocks, value))
        return value

    def set_append(self, log_append):
        self._append = log_append

    def feed(self, rec: R.Rng):
        self._queue.append(rec)

    def pending(self) -> int:
        return len(self._queue)
