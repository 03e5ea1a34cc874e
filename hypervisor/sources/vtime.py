"""Virtual time: what RDTSC and RDTSCP return. The hot path is C (fastpath.c).

Record: the C hook reads CLOCK_MONOTONIC, adds an offset, never goes backwards, and
buffers (blocks, pc, value) entries; ``drain`` turns them into TscBatch records.
Replay: ``feed`` queues logged entries; the C hook hands them out and checks that each
RDTSC runs at the block count and pc the log says; ``refill`` tops the C buffer up.
Units: nanoseconds of guest time.
"""
from __future__ import annotations

import array
import collections

from logging_channel import codec
from logging_channel import records as R

from ..errors import Divergence
from ..uc import DIV_TSC_EXHAUSTED, DIV_TSC_POINT, SYNC_TSC_DRAIN, TSC_HOST, TSC_REPLAY, TSC_SYNTHETIC, ffi, lib


class VirtualTime:
    def __init__(self, cpu, mode: str, synthetic_ns_per_block: int = 0):
        self.cpu = cpu
        self.mode = mode
        self._queue = collections.deque()   # replay: TscBatch records not yet in C
        if mode == "replay":
            cpu.tsc_mode = TSC_REPLAY
        elif synthetic_ns_per_block:
            cpu.tsc_mode = TSC_SYNTHETIC
            cpu.tsc_synth_ns_per_block = synthetic_ns_per_block
            cpu.tsc_offset_ns = 0
        else:
            cpu.tsc_mode = TSC_HOST
            # Guest time starts near zero when the guest starts.
            cpu.tsc_offset_ns = -int(lib.ftvm_host_ns())

    def now(self) -> int:
        """Guest time now, without consuming anything: the last value handed out, or
        (record) the clock's current reading if that is later."""
        if self.cpu.tsc_mode == TSC_HOST:
            return max(int(self.cpu.tsc_last), int(lib.ftvm_host_ns()) + int(self.cpu.tsc_offset_ns))
        return int(self.cpu.tsc_last)

    # --- record side -----------------------------------------------------------------
    def drain(self):
        """The RDTSC results buffered since the last drain, as one record (or None)."""
        c = self.cpu
        c.sync_req &= ~SYNC_TSC_DRAIN
        n = c.tsc_len
        if n == 0:
            return None
        words = array.array("Q", bytes(ffi.buffer(c.tsc_buf, 24 * n)))
        packed = codec.encode_entries(int(ffi.cast("uintptr_t", c.tsc_buf)), n)
        c.tsc_len = 0
        return R.TscBatch(n, packed, words)

    # --- replay side -----------------------------------------------------------------
    def feed(self, batch: R.TscBatch):
        self._queue.append((batch.entries, 0))
        if not self.cpu.tsc_more or self.cpu.tsc_len - self.cpu.tsc_pos < 1024:
            self.refill()

    def refill(self):
        c = self.cpu
        c.sync_req &= ~SYNC_TSC_DRAIN
        left = c.tsc_len - c.tsc_pos
        if c.tsc_pos:
            ffi.memmove(c.tsc_buf, c.tsc_buf + 3 * c.tsc_pos, 24 * left)
            c.tsc_pos = 0
            c.tsc_len = left
        while self._queue:
            batch = self._queue[0]
            room = c.tsc_cap - c.tsc_len
            if room == 0:
                break
            words, start = batch
            avail = (len(words) - start) // 3
            take = min(room, avail)
            ffi.memmove(c.tsc_buf + 3 * c.tsc_len, memoryview(words)[start:start + 3 * take], 24 * take)
            c.tsc_len += take
            if take == avail:
                self._queue.popleft()
            else:
                self._queue[0] = (words, start + 3 * take)
        c.tsc_more = 1 if self._queue else 0

    def pending(self) -> int:
        """Logged RDTSC results not yet consumed."""
        return self.cpu.tsc_len - self.cpu.tsc_pos + sum((len(w) - s) // 3 for w, s in self._queue)

    def divergence(self, point):
        c = self.cpu
        if c.diverged == DIV_TSC_POINT:
            return Divergence(point, f"RDTSC #{c.div_index} ran at block {c.div_blocks} pc {c.div_pc:#x}, "
                                     f"but the log has it at block {c.div_expected} pc {c.div_expected_pc:#x}")
        if c.diverged == DIV_TSC_EXHAUSTED:
            return Divergence(point, f"RDTSC #{c.div_index} ran at block {c.div_blocks} pc {c.div_pc:#x}, "
                                     f"but the log holds no more RDTSC results before the next event")
        return None
