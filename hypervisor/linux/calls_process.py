"""The process family: identity (fixed by the personality, not logged), limits,
uname, signals (remembered, never delivered yet), thread bookkeeping for a
single-threaded process, and the calls a single process refuses."""
from __future__ import annotations

import errno
import struct

from .fs import GuestErr
from .loader import GID, UID
from .table import REFUSED, syscall

PID, PPID = 100, 1
ARCH_SET_GS, ARCH_SET_FS, ARCH_GET_FS, ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
ARCH_GET_CPUID, ARCH_SET_CPUID = 0x1011, 0x1012
INF = 2**64 - 1
RLIMITS = {0: (INF, INF), 1: (INF, INF), 2: (INF, INF), 3: (8 << 20, INF), 4: (0, INF), 5: (INF, INF),
           6: (4096, 4096), 7: (1024, 1048576), 8: (8 << 20, 8 << 20), 9: (INF, INF), 10: (INF, INF),
           11: (4096, 4096), 12: (819200, 819200), 13: (0, 0), 14: (0, 0), 15: (INF, INF)}


def _fixed(name, value, note="fixed answer"):
    @syscall(name, family="process", note=note)
    def handler(k):
        return value
    return handler


for _name, _v in (("getpid", PID), ("getppid", PPID), ("gettid", PID), ("getuid", UID), ("geteuid", UID),
                  ("getgid", GID), ("getegid", GID), ("getpgrp", PID), ("setsid", PID)):
    _fixed(_name, _v)


@syscall("getpgid", "int", family="process", note="fixed answer")
def sys_getpgid(k, pid):
    return PID


@syscall("getsid", "int", family="process", note="fixed answer")
def sys_getsid(k, pid):
    return PID


@syscall("setpgid", "int", "int", family="process")
def sys_setpgid(k, pid, pgid):
    return 0


@syscall("getresuid", "ptr", "ptr", "ptr", family="process", note="fixed answer")
def sys_getresuid(k, a, b, c):
    for p in (a, b, c):
        k.write_mem(p, struct.pack("<I", UID))
    return 0


@syscall("getresgid", "ptr", "ptr", "ptr", family="process", note="fixed answer")
def sys_getresgid(k, a, b, c):
    for p in (a, b, c):
        k.write_mem(p, struct.pack("<I", GID))
    return 0


@syscall("getgroups", "int", "ptr", family="process", note="fixed answer")
def sys_getgroups(k, n, lst):
    if n:
        k.write_mem(lst, struct.pack("<I", GID))
    return 1


@syscall("exit", "int", family="process")
def sys_exit(k, status):        # handled before dispatch (Kernel.exit_pending)
    raise AssertionError("exit is handled by the kernel")


@syscall("exit_group", "int", family="process")
def sys_exit_group(k, status):
    raise AssertionError("exit_group is handled by the kernel")


@syscall("arch_prctl", "hex", "hex", family="process")
def sys_arch_prctl(k, code, addr):
    v = k.m.vcpu
    if code == ARCH_SET_FS:
        v.set_reg("fs_base", addr)
    elif code == ARCH_SET_GS:
        v.set_reg("gs_base", addr)
    elif code == ARCH_GET_FS:
        k.write_mem(addr, struct.pack("<Q", v.reg("fs_base")))
    elif code == ARCH_GET_GS:
        k.write_mem(addr, struct.pack("<Q", v.reg("gs_base")))
    else:
        raise GuestErr(errno.EINVAL)
    return 0


@syscall("set_tid_address", "ptr", family="process")
def sys_set_tid_address(k, ptr):
    k.clear_child_tid = ptr
    return PID


@syscall("set_robust_list", "ptr", "size", family="process")
def sys_set_robust_list(k, head, size):
    if size != 24:
        raise GuestErr(errno.EINVAL)
    k.robust_list = head
    return 0


@syscall("rseq", "ptr", "size", "hex", "hex", family="process",
         note="registered; the process always runs on CPU 0")
def sys_rseq(k, ptr, size, flags, sig):
    if flags & 1:           # unregister
        k.rseq = 0
        return 0
    if size < 32 or ptr % 32:
        raise GuestErr(errno.EINVAL)
    k.rseq = ptr
    k.write_mem(ptr, struct.pack("<II", 0, 0))   # cpu_id_start, cpu_id
    return 0


@syscall("prlimit64", "int", "int", "ptr", "ptr", family="process", note="fixed limits; setting is accepted")
def sys_prlimit64(k, pid, res, new, old):
    if res not in RLIMITS:
        raise GuestErr(errno.EINVAL)
    if old:
        k.write_mem(old, struct.pack("<QQ", *k.rlimits.get(res, RLIMITS[res])))
    if new:
        k.rlimits[res] = struct.unpack("<QQ", k.read_mem(new, 16))
    return 0


@syscall("getrlimit", "int", "ptr", family="process", note="fixed limits")
def sys_getrlimit(k, res, old):
    return sys_prlimit64(k, 0, res, 0, old)


@syscall("setrlimit", "int", "ptr", family="process")
def sys_setrlimit(k, res, new):
    return sys_prlimit64(k, 0, res, new, 0)


def _field(s):
    return s.encode().ljust(65, b"\0")


@syscall("uname", "ptr", family="process", note="fixed answer: Linux 6.1.0-ftvm x86_64, host name ftvm")
def sys_uname(k, buf):
    k.write_mem(buf, b"".join(_field(s) for s in ("Linux", "ftvm", "6.1.0-ftvm", "#1 SMP ftvm", "x86_64", "(none)")))
    return 0


@syscall("sysinfo", "ptr", family="process", note="fixed answer, uptime from guest time")
def sys_sysinfo(k, buf):
    up = k.vtime_state() // 10**9
    info = struct.pack("<q3Q6QH6xQQI", up, 0, 0, 0, 8 << 30, 6 << 30, 0, 0, 0, 0, 1, 0, 0, 1)
    k.write_mem(buf, info.ljust(112, b"\0"))
    return 0


@syscall("sched_getaffinity", "int", "size", "ptr", family="process", note="one CPU")
def sys_sched_getaffinity(k, pid, size, mask):
    if size < 8:
        raise GuestErr(errno.EINVAL)
    k.write_mem(mask, struct.pack("<Q", 1))
    return 8


@syscall("sched_setaffinity", "int", "size", "ptr", family="process")
def sys_sched_setaffinity(k, pid, size, mask):
    return 0


@syscall("sched_yield", family="process")
def sys_sched_yield(k):
    return 0


@syscall("getcpu", "ptr", "ptr", family="process", note="always CPU 0")
def sys_getcpu(k, cpu, node):
    if cpu:
        k.write_mem(cpu, bytes(4))
    if node:
        k.write_mem(node, bytes(4))
    return 0


@syscall("rt_sigaction", "int", "ptr", "ptr", "size", family="process",
         note="handlers are remembered; signal delivery comes with the server personality")
def sys_rt_sigaction(k, sig, act, oldact, size):
    if not 1 <= sig <= 64 or sig in (9, 19) and act:
        raise GuestErr(errno.EINVAL)
    if oldact:
        k.write_mem(oldact, k.sigactions.get(sig, bytes(32)))
    if act:
        k.sigactions[sig] = k.read_mem(act, 32)
    return 0


@syscall("rt_sigprocmask", "int", "ptr", "ptr", "size", family="process")
def sys_rt_sigprocmask(k, how, new, old, size):
    if old:
        k.write_mem(old, struct.pack("<Q", k.sigmask))
    if new:
        m = struct.unpack("<Q", k.read_mem(new, 8))[0]
        if how == 0:
            k.sigmask |= m
        elif how == 1:
            k.sigmask &= ~m
        elif how == 2:
            k.sigmask = m
        else:
            raise GuestErr(errno.EINVAL)
    return 0


@syscall("sigaltstack", "ptr", "ptr", family="process")
def sys_sigaltstack(k, new, old):
    if old:
        k.write_mem(old, k.altstack)
    if new:
        k.altstack = k.read_mem(new, 24)
    return 0


@syscall("futex", "ptr", "int", "int", "ptr", "ptr", "int", family="process",
         note="one thread: WAKE wakes nobody, WAIT on a changed value is EAGAIN")
def sys_futex(k, uaddr, op, val, timeout, uaddr2, val3):
    cmd = op & 0x7F
    if cmd in (1, 10):               # FUTEX_WAKE, FUTEX_WAKE_BITSET
        return 0
    if cmd in (0, 9):                # FUTEX_WAIT, FUTEX_WAIT_BITSET
        cur = struct.unpack("<I", k.read_mem(uaddr, 4))[0]
        if cur != val & 0xFFFFFFFF:
            raise GuestErr(errno.EAGAIN)
        if timeout:
            return -errno.ETIMEDOUT
        raise GuestErr(errno.EDEADLK)
    raise GuestErr(errno.ENOSYS)


@syscall("kill", "int", "int", family="process", note="signals to itself are accepted and not delivered yet")
def sys_kill(k, pid, sig):
    return 0


@syscall("tgkill", "int", "int", "int", family="process")
def sys_tgkill(k, tgid, tid, sig):
    return 0


@syscall("prctl", "int", "hex", "hex", "hex", "hex", family="process")
def sys_prctl(k, option, a2, a3, a4, a5):
    if option == 15:     # PR_SET_NAME
        return 0
    if option == 16:     # PR_GET_NAME
        k.write_mem(a2, b"ftvm-guest\0".ljust(16, b"\0"))
        return 0
    raise GuestErr(errno.EINVAL)


@syscall("getrusage", "int", "ptr", family="process", note="zeros")
def sys_getrusage(k, who, buf):
    k.write_mem(buf, bytes(144))
    return 0


@syscall("times", "ptr", family="process")
def sys_times(k, buf):
    ticks = k.vtime_state() // 10**7
    if buf:
        k.write_mem(buf, struct.pack("<qqqq", ticks, 0, 0, 0))
    return ticks


@syscall("getpriority", "int", "int", family="process", note="fixed answer")
def sys_getpriority(k, which, who):
    return 20


@syscall("setpriority", "int", "int", "int", family="process")
def sys_setpriority(k, which, who, prio):
    return 0


def _refuse(name):
    @syscall(name, "hex", "hex", "hex", family="process", note=f"refused: {REFUSED[name]}")
    def handler(k, a, b, c):
        k.note_once(name, f"{name} is not supported ({REFUSED[name]}); the program gets ENOSYS")
        return -errno.ENOSYS
    return handler


for _name in REFUSED:
    _refuse(_name)
