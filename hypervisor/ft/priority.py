"""Asking the OS to run the logging channel's threads as soon as a message arrives.

The Output Rule's latency is a chain of wake-ups: the primary's libzmq thread sends,
the backup's libzmq thread receives and wakes the backup's I/O thread, which
acknowledges, and the same again back. On a machine whose cores are busy (the primary's
emulation and the backup's replay each keep one busy) every wake-up waits for the
scheduler to preempt somebody. Linux's EEVDF scheduler does not preempt at once for a
woken thread of a higher weight: with nice -10 alone, one output in a hundred waited
4-6 ms for its acknowledgement on a quiet 2-core machine (`ftvm bench --only ft`).

So libzmq's I/O threads (which move the bytes and never take Python's interpreter
lock) ask, in this order:
  fifo   SCHED_FIFO at a low real-time priority (root, CAP_SYS_NICE or an RLIMIT_RTPRIO).
         These threads sleep in poll and run for microseconds per message; a real-time
         thread that did spin would still leave 5% of each core to others (the kernel's
         sched_rt_runtime_us). With it (and the slice for ftvm's thread) the same p99
         is about 1 ms.
  slice  a short EEVDF time slice (sched_setattr's sched_runtime, Linux 6.12 and later,
         allowed to anyone) with nice -10 where permitted: a woken thread with a short
         slice gets an early deadline. p99 2-5 ms here.
  nice   nice -10 only (older kernels, as root).
ftvm's own I/O thread, which runs Python, takes the short slice (raise_python_thread).
The choice is per thread; the I/O thread's is not inherited (SCHED_RESET_ON_FORK).
FTVM_IO_SCHED=fifo|slice|nice|off picks a ceiling (default fifo: the best allowed).
The status file reports what each node got (`io_sched`).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import threading

MODES = ("fifo", "slice", "nice", "off")
FIFO_PRIORITY = 2          # low among real-time threads: above every normal thread
SLICE_NS = 100_000         # the shortest slice Linux allows
IO_NICE = -10

_SYS_SCHED_SETATTR = 314   # x86-64
_SYS_SCHED_GETATTR = 315
_ATTR = struct.Struct("IIqiIQQQII")    # struct sched_attr, version 1 (56 bytes)
_RESET_ON_FORK = 0x01                  # SCHED_FLAG_RESET_ON_FORK
_libc = None


def wanted() -> str:
    mode = os.environ.get("FTVM_IO_SCHED", "fifo").strip().lower() or "fifo"
    return mode if mode in MODES else "fifo"


def _sched_setattr(policy: int, nice: int, runtime_ns: int, flags: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, policy, flags, nice,
                                                 0, runtime_ns, 0, 0, 0, 0))
    return _libc.syscall(_SYS_SCHED_SETATTR, 0, buf, 0) == 0


def _current_nice() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except OSError:
        return 0


def raise_this_thread(ceiling: str | None = None, inherited: bool = False) -> str:
    """Give the calling thread the best latency this process may ask for, up to
    ``ceiling`` (FTVM_IO_SCHED by default). Returns the mode it got. Threads and
    processes it starts get the normal policy back, unless ``inherited`` (Linux's
    reset-on-fork covers threads too)."""
    ceiling = ceiling or wanted()
    order = MODES[MODES.index(ceiling):]
    for mode in order:
        if mode == "fifo":
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO | (0 if inherited else os.SCHED_RESET_ON_FORK),
                                      os.sched_param(FIFO_PRIORITY))
                return "fifo"
            except (OSError, AttributeError):
                continue
        if mode == "slice":
            try:
                for nice in (IO_NICE, _current_nice()):
                    if _sched_setattr(os.SCHED_OTHER, nice, SLICE_NS, 0 if inherited else _RESET_ON_FORK):
                        return "slice"
            except (OSError, AttributeError, ValueError):
                pass
            continue
        if mode == "nice":
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IO_NICE)
                return "nice"
            except OSError:
                continue
    return "off"


def lower_this_thread(nice: int) -> None:
    """Back to the normal policy, default slice and ``nice``."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass
    try:
        if not _sched_setattr(os.SCHED_OTHER, nice, 0, 0):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError, ValueError):
        pass


def raise_python_thread() -> str:
    """For a thread that runs Python (ftvm's own I/O thread): a short slice and nice
    -10, not real-time. It needs the interpreter lock for every message: woken at
    once by SCHED_FIFO, it mostly preempted its own process's emulation thread only to
    wait for the lock that thread held, which put the median acknowledgement up by
    about 80 µs (`ftvm run lines.elf`, four interleaved pairs on a quiet 2-core
    machine, libzmq's threads real-time in both: p50 176-202 µs and p99 0.8-1.3 ms
    this way, p50 214-294 µs and p99 0.5-0.75 ms with this thread real-time too)."""
    ceiling = wanted()
    return raise_this_thread("slice" if ceiling == "fifo" else ceiling)


@contextlib.contextmanager
def threads_started_here_raised(got: list | None = None):
    """Threads created inside inherit the raised policy (libzmq's I/O thread starts with
    a context's first socket); the calling thread goes back to what it had. ``got``
    receives the mode."""
    nice = _current_nice()
    mode = raise_this_thread(inherited=True)
    if got is not None:
        got.append(mode)
    try:
        yield
    finally:
        lower_this_thread(nice)
