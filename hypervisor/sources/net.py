"""The network device (guest ABI v2): connections from the front end, as events.

Record side: the front end (hypervisor/frontend.py, or the observer's copy of it in a
fault-tolerant run) turns each client connection into events (open, data, close,
reset) tagged with a connection id. They reach the machine at a stop, are logged as
NET records at that execution point, appended to the device's queue, and raise
interrupt 2. Replay side: the NET records append the same events at the same points.

The guest pops events with the NET_RECV hypercall and answers with NET_SEND /
NET_CLOSE. Answers are not sent anywhere from here: they become frames in the
machine's network output stream (a Console, so it is counted, checksummed, retained
for re-sends and released only at stops under the Output Rule, exactly as console
output is). A frame is

    u32 connection id | u8 type (2 data, 3 close) | u32 length | data

little-endian; ``parse_frames`` splits a stream back into frames.
"""
from __future__ import annotations

import collections
import struct

from logging_channel import records as R

from .. import abi

FRAME = struct.Struct("<IBI")
EVENT = struct.Struct("<IIII")
SEND_MAX = 16 << 20          # longest single NET_SEND; longer is a guest error


class NetDevice:
    def __init__(self, vcpu, out):
        self.vcpu = vcpu
        self.out = out              # Console for the output stream
        self.queue = collections.deque()   # [conn, type, bytes]
        self.events = 0             # events ever appended: the net input stream index

    # --- host side (at stops, record or replay) ----------------------------------------
    def append(self, conn: int, type_: int, data: bytes):
        self.queue.append([conn, type_, data])
        self.events += 1

    def record(self, log, blocks: int, rip: int, events) -> bool:
        """Record side, at a stop: the front end's events arrive at this point, each
        logged as a NET record. Returns True if any came (the caller raises the line)."""
        for conn, type_, payload in events:
            log(R.Net(blocks, rip, conn, type_, payload or b""))
            self.append(conn, type_, payload or b"")
        return bool(events)

    def replay(self, ev: R.Net):
        self.append(ev.conn, ev.type, ev.data)

    # --- guest side (port hooks) -------------------------------------------------------
    def status(self) -> int:
        return min(len(self.queue), 0xFFFF)

    def recv(self, ev_ptr: int, buf: int, cap: int):
        """NET_RECV: move the next event (or as much of a data event as fits) to the guest."""
        if not self.queue:
            self.vcpu.write(ev_ptr, EVENT.pack(abi.NET_NONE, 0, 0, 0))
            return
        conn, type_, data = self.queue[0]
        n = 0
        if type_ == abi.NET_DATA:
            n = min(len(data), cap & 0xFFFFFFFF)
            if n:
                self.vcpu.write(buf, data[:n])
            if n < len(data):
                self.queue[0][2] = data[n:]
            else:
                self.queue.popleft()
        else:
            self.queue.popleft()
        self.vcpu.write(ev_ptr, EVENT.pack(type_, conn, n, min(len(self.queue), 0xFFFFFFFF)))

    def send(self, conn: int, ptr: int, n: int):
        if n > SEND_MAX:
            raise ValueError(f"network send of {n} bytes (at most {SEND_MAX})")
        data = self.vcpu.read(ptr, n) if n else b""
        if data:
            self.out.write(FRAME.pack(conn & 0xFFFFFFFF, abi.NET_DATA, len(data)) + data)

    def close(self, conn: int):
        self.out.write(FRAME.pack(conn & 0xFFFFFFFF, abi.NET_CLOSE, 0))

    # --- snapshots ------------------------------------------------------------------------
    def state(self):
        return [[list(e) for e in self.queue], self.events]

    def set_state(self, st):
        queue, self.events = st
        self.queue = collections.deque([c, t, bytes(d)] for c, t, d in queue)


def parse_frames(buf: bytearray):
    """Whole frames at the front of ``buf`` as (conn, type, data), removed from it; a
    partial frame stays for the next call."""
    out, off = [], 0
    while len(buf) - off >= FRAME.size:
        conn, type_, n = FRAME.unpack_from(buf, off)
        if len(buf) - off - FRAME.size < n:
            break
        out.append((conn, type_, bytes(buf[off + FRAME.size:off + FRAME.size + n])))
        off += FRAME.size + n
    del buf[:off]
    return out
