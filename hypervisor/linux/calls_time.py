"""Time and randomness. Guest time is virtual time, shared with RDTSC: it comes from the
host's monotonic clock when recording, is logged with each call, never runs backwards
(not even across a failover), and CLOCK_REALTIME is guest time plus the wall-clock
offset fixed when the run started (in the log's header). Random bytes (getrandom,
/dev/urandom, AT_RANDOM) are logged."""
from __future__ import annotations

import errno
import os
import struct

from .fs import GuestErr
from .kernel import Blocked
from .table import syscall

CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID = 0, 1, 2, 3
CLOCK_MONOTONIC_RAW, CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE, CLOCK_BOOTTIME = 4, 5, 6, 7
CLOCK_TAI = 11
REALTIME_CLOCKS = (CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_TAI)
KNOWN_CLOCKS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11)
TIMER_ABSTIME = 1
GRND_NONBLOCK = 1


def now(k, clock=CLOCK_MONOTONIC):
    """Guest time in ns on ``clock``: a logged input, monotonic with RDTSC."""
    ns = k.host(k.vtime_read)
    k.vtime_seen(ns)
    return ns + k.realtime_base_ns if clock in REALTIME_CLOCKS else ns


def _ts(ns):
    return struct.pack("<qq", ns // 10**9, ns % 10**9)


@syscall("clock_gettime", "int", "ptr", family="time")
def sys_clock_gettime(k, clock, tp):
    if clock not in KNOWN_CLOCKS:
        raise GuestErr(errno.EINVAL)
    k.write_mem(tp, _ts(now(k, clock)))
    return 0


@syscall("clock_getres", "int", "ptr", family="time", note="fixed answer: 1 ns")
def sys_clock_getres(k, clock, tp):
    if clock not in KNOWN_CLOCKS:
        raise GuestErr(errno.EINVAL)
    if tp:
        k.write_mem(tp, _ts(1))
    return 0


@syscall("gettimeofday", "ptr", "ptr", family="time")
def sys_gettimeofday(k, tv, tz):
    ns = now(k, CLOCK_REALTIME)
    if tv:
        k.write_mem(tv, struct.pack("<qq", ns // 10**9, (ns % 10**9) // 1000))
    if tz:
        k.write_mem(tz, bytes(8))
    return 0


@syscall("time", "ptr", family="time")
def sys_time(k, tloc):
    s = now(k, CLOCK_REALTIME) // 10**9
    if tloc:
        k.write_mem(tloc, struct.pack("<q", s))
    return s


def _sleep(k, deadline_of):
    """The thread waits until guest time reaches a deadline. First attempt: work out
    the deadline (``deadline_of()``; it may read the clock, a logged input) and wait
    (a WAIT record). The scheduler tries the call again once the deadline has passed:
    it then returns."""
    t = k.threads.cur
    if t.sleep_deadline is not None:
        if now(k) >= t.sleep_deadline:
            t.sleep_deadline = None
            return
        raise Blocked("sleep", until_ns=t.sleep_deadline)
    deadline = deadline_of()
    if deadline <= k.vtime_state():
        return
    t.sleep_deadline = deadline
    raise Blocked("sleep", until_ns=deadline)


@syscall("nanosleep", "ptr", "ptr", family="time")
def sys_nanosleep(k, req, rem):
    sec, nsec = struct.unpack("<qq", k.read_mem(req, 16))
    if sec < 0 or not 0 <= nsec < 10**9:
        raise GuestErr(errno.EINVAL)
    _sleep(k, lambda: now(k) + sec * 10**9 + nsec)
    if rem:
        k.write_mem(rem, bytes(16))
    return 0


@syscall("clock_nanosleep", "int", "int", "ptr", "ptr", family="time")
def sys_clock_nanosleep(k, clock, flags, req, rem):
    if clock not in KNOWN_CLOCKS:
        raise GuestErr(errno.EINVAL)
    sec, nsec = struct.unpack("<qq", k.read_mem(req, 16))
    if flags & TIMER_ABSTIME:
        _sleep(k, lambda: sec * 10**9 + nsec - (k.realtime_base_ns if clock in REALTIME_CLOCKS else 0))
    else:
        _sleep(k, lambda: now(k) + sec * 10**9 + nsec)
    return 0


@syscall("getrandom", "obuf", "size", "hex", family="random")
def sys_getrandom(k, buf, n, flags):
    n = min(n, 1 << 20)
    data = k.host(lambda: os.urandom(n))
    k.write_mem(buf, data)
    return len(data)
