"""System calls run inside the syscall hook, without stopping the engine.

A stop costs far more than most calls: the engine leaves emu_start, the recording or
replay loop runs its checks, the engine starts again. A request to a network server
makes about four calls (epoll_wait, read, a clock read, write), so a server spent most
of its time stopping. For the calls below the C hook (fastpath.c) calls back into
Python at once, and the call runs right there, at the same execution point the stop
would have given it: the syscall ends its block, the block is already counted, and the
record carries the syscall's own pc. Registers are left as the instruction leaves them
(rcx is the next instruction's address, which at a stop is rip and here is pc + 2).

What runs in the hook is exactly the stop's first step (record: run the call and log
its SYSCALL or WAIT record; replay: apply the next record, which must be this call's),
and nothing that logs the stop's own point (a Progress record, output release, a
digest) or changes threads: a call that must wait, exit or yield runs here too, but
then asks for the stop, where the scheduler takes over. Which calls: those that touch
only sockets, readiness and the clock, so that running one cannot make another thread
runnable (the preemption stop was armed before; a futex wake or a pipe write would
change it) and cannot need the Output Rule (a data-directory write logs an Intent at
a stop). The rest stop as before. Logs are the same records either way, so old logs
replay and a log made with this replays without it.
"""
from __future__ import annotations

import collections

from logging_channel import records as R

from ..uc import ffi, lib
from .sysnames import NUMBERS

STOP, DONE, DONE_STOP = 0, 1, 2

TIME_CALLS = frozenset(NUMBERS[n] for n in ("gettimeofday", "clock_gettime", "time"))
SOCKET_CALLS = frozenset(NUMBERS[n] for n in ("read", "write", "readv", "writev", "recvfrom", "sendto",
                                              "recvmsg", "sendmsg"))
EPOLL_CALLS = frozenset(NUMBERS[n] for n in ("epoll_wait", "epoll_pwait"))
CALLS = TIME_CALLS | SOCKET_CALLS | EPOLL_CALLS
_SYS_TIME = NUMBERS["time"]


def eligible(k, nr, fd):
    """May call ``nr`` on ``fd`` run in the hook? (Its file decides: a connected
    socket's read and write, or an epoll instance's wait; time calls always.)"""
    if nr in TIME_CALLS:
        return True
    f = k.files.fds.get(fd if fd < 1 << 31 else fd - (1 << 32))
    if nr in SOCKET_CALLS:
        return type(f) is _net.ConnSocket
    return type(f) is _net.Epoll


_SYS_READ, _SYS_WRITE = NUMBERS["read"], NUMBERS["write"]
_M64 = (1 << 64) - 1


def socket_io(k, nr, args, pc):
    """The commonest calls of a server, record and replay alike: read of a connected
    socket that has data, write to one that can take it. Does exactly what
    calls_files.sys_read / sys_write and ConnSocket do in that case, with less Python
    (no host values: socket data is guest state), and returns the result; None (having
    changed nothing) for any other case, which then takes the general path."""
    fd, buf, n = args
    f = k.files.fds.get(fd if fd < 1 << 31 else fd - (1 << 32))
    if type(f) is not _net.ConnSocket or k.redo_values or not 0 < n < 1 << 63:
        return None
    st = f.st
    uch = k.m.vcpu._uch
    if nr == _SYS_READ:
        if not st.buf or not f.readable():
            return None
        data = bytes(st.buf[:min(n, _net.RECV_MAX, _IO_MAX)])
        if lib.ftvm_mem_write(uch, buf, data, len(data)):
            return None             # not all there: the general path says EFAULT
        del st.buf[:len(data)]
        ret = len(data)
    elif nr == _SYS_WRITE:
        if st.reset or f.shut_wr or not f.writable():
            return None
        size = min(n, _IO_MAX)
        out = ffi.new("uint8_t[]", size)
        if lib.ftvm_mem_read(uch, buf, out, size):
            return None
        k.m.netout.append(_net.FRAME.pack(f.conn & 0xFFFFFFFF, _ABI_NET_DATA, size) + ffi.buffer(out, size)[:])
        ret = size
    else:
        return None
    lib.ftvm_sys_return(uch, ret, pc + 2)
    t = k.threads.cur
    t.blocked = None
    t.intent = None
    k.calls += 1
    return ret


from . import net as _net    # noqa: E402  (after CALLS: net's import chain does not need this module)
from .files import IO_MAX as _IO_MAX    # noqa: E402
from ..abi import NET_DATA as _ABI_NET_DATA    # noqa: E402



class InHook:
    """Installs ``run()`` (returns STOP, DONE or DONE_STOP) as the hook's callback on
    ``cpu`` for CALLS; ``error`` keeps an exception raised in the hook, for the loop
    to raise after the stop it asks for."""

    def __init__(self, cpu, run):
        self.cpu = cpu
        self.error = None
        self.queued = collections.deque()     # replay: clock-read records queued for C
        self._run = run
        self._cb = ffi.callback("int(ftvm_cpu *)", self._call)

    def _call(self, _cpu):
        if self.error is not None:
            return STOP
        try:
            return self._run()
        except BaseException as e:      # noqa: BLE001 - kept, raised by the loop
            self.error = e
            lib.ftvm_request(self.cpu, 4)
            return STOP

    def install(self, calls=CALLS):
        c = self.cpu
        for i in range(8):
            c.sys_fast_mask[i] = 0
        for nr in calls:
            c.sys_fast_mask[nr >> 6] |= 1 << (nr & 63)
        c.sys_fast = self._cb

    def record_clocks(self, realtime_base_ns, frames_bytes=1 << 16):
        """Record side: clock reads run in C (fastpath.c), their records encoded into
        a buffer that ``take_frames`` empties."""
        c = self.cpu
        self._frames = ffi.new("uint8_t[]", frames_bytes)
        c.sys_frames, c.sys_frames_cap = self._frames, frames_bytes
        c.sys_frames_len = c.sys_frames_count = 0
        c.sys_realtime_base_ns = realtime_base_ns
        c.sys_time_c = 1

    def take_frames(self):
        """(frames, count) made in C since the last call, or None."""
        c = self.cpu
        n = c.sys_frames_count
        if not n:
            return None
        blob = bytes(ffi.buffer(c.sys_frames, c.sys_frames_len))
        c.sys_frames_len = c.sys_frames_count = 0
        return blob, n

    # --- replay: clock reads applied in C from a queue of their records ------------
    def replay_clocks(self, realtime_base_ns, entries=4096):
        """Replay side: clock reads are applied in C from the records queued here
        (``queue``), in log order; Python keeps the records (``queued``) until C has
        applied them (``sync``)."""
        c = self.cpu
        self._tq = ffi.new("uint64_t[]", 7 * entries)
        c.sys_tq, c.sys_tq_cap = self._tq, entries
        c.sys_tq_len = c.sys_tq_pos = 0
        c.sys_realtime_base_ns = realtime_base_ns
        c.sys_time_c = 2
        self.queued = collections.deque()
        self._synced = 0

    def replay_sockets(self, run):
        """Replay side, after ``replay_clocks``: socket reads and writes are queued for C
        too (in log order with the clock reads, so the queue stays the log's order), and
        C calls ``run()`` when the guest makes the one at the head. ``run`` moves the
        bytes (``socket_io``) and returns True, or False having changed nothing (the
        replay loop then applies the record at the stop: a console or pipe write must
        not run in the hook); it may raise (a divergence): the error is
        kept, the stop asked for, and the entry counts as used."""
        self._run_sock = run
        self._sock_cb = ffi.callback("int(ftvm_cpu *)", self._sock_call)
        self.cpu.sys_sock = self._sock_cb

    def _sock_call(self, _cpu):
        if self.error is not None:
            return 0
        try:
            return 1 if self._run_sock() else 0
        except BaseException as e:      # noqa: BLE001 - kept, raised by the loop
            self.error = e
            lib.ftvm_request(self.cpu, 4)
            return 1

    def entry(self):
        """C's queue entry at its head (blocks, pc, nr, arg0, arg1, ret, arg2 or the value)."""
        e = 7 * self.cpu.sys_tq_pos
        return self._tq[e:e + 7]

    def queue(self, rec):
        """Queue a clock read's SYSCALL record for C, or (with ``replay_sockets``) a
        socket read's or write's; False if it is not one C applies (an error result, an
        unknown clock, host values) or the queue is full."""
        c = self.cpu
        if rec.nr in (_SYS_READ, _SYS_WRITE) and c.sys_sock != ffi.NULL:
            if (len(rec.args) != 3 or rec.values or rec.strings or rec.ret >= 1 << 63
                    or c.sys_tq_len >= c.sys_tq_cap):
                return False
            e = 7 * c.sys_tq_len
            a = rec.args
            for i, v in enumerate((rec.blocks, rec.pc, rec.nr, a[0], a[1], rec.ret, a[2])):
                self._tq[e + i] = v
            c.sys_tq_len += 1
            self.queued.append(rec)
            return True
        if (rec.nr not in TIME_CALLS or len(rec.values) != 1 or rec.strings or c.sys_tq_len >= c.sys_tq_cap
                or len(rec.args) != (1 if rec.nr == _SYS_TIME else 2) or rec.ret >= 1 << 63
                or (rec.nr != _SYS_TIME and rec.ret != 0) or type(rec.values[0]) is not int):
            return False
        e = 7 * c.sys_tq_len
        a = rec.args
        for i, v in enumerate((rec.blocks, rec.pc, rec.nr, a[0], a[1] if len(a) > 1 else 0, rec.ret, rec.values[0])):
            self._tq[e + i] = v & 0xFFFF_FFFF_FFFF_FFFF
        c.sys_tq_len += 1
        self.queued.append(rec)
        return True

    def sync(self):
        """How many queued records C applied since the last call (they are dropped)."""
        c = self.cpu
        n = c.sys_tq_pos - self._synced
        for _ in range(n):
            self.queued.popleft()
        self._synced = c.sys_tq_pos
        if c.sys_tq_pos == c.sys_tq_len:
            c.sys_tq_pos = c.sys_tq_len = self._synced = 0
        return n

    def head(self):
        """The next queued record, left queued (to name it in a divergence)."""
        rec = self.queued[0]
        return R.decode_checked(*rec) if type(rec) is tuple else rec

    def pop(self):
        """The next queued record, taken from C's queue (for Python to apply)."""
        self.sync()
        self.cpu.sys_tq_pos += 1
        self._synced += 1
        rec = self.queued.popleft()
        if type(rec) is tuple:      # queued by C from a checked frame (replay.py): decoded now
            rec = R.decode_checked(*rec)
        return rec

    def remove(self):
        c = self.cpu
        c.sys_fast = ffi.NULL
        c.sys_sock = ffi.NULL
        c.sys_time_c = 0
        c.sys_frames = ffi.NULL
        c.sys_frames_cap = 0
        c.sys_tq = ffi.NULL
        c.sys_tq_cap = c.sys_tq_len = c.sys_tq_pos = 0

    def raise_error(self):
        e, self.error = self.error, None
        if e is not None:
            raise e
