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


for _name, _v in (("getpid", PID), ("getppid", PPID), ("getuid", UID), ("geteuid", UID),
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


@syscall("setuid", "int", family="process", note="an unprivileged process: only to its own uid")
def sys_setuid(k, uid):
    if uid & 0xFFFFFFFF != UID:
        raise GuestErr(errno.EPERM)
    return 0


@syscall("setgid", "int", family="process", note="an unprivileged process: only to its own gid")
def sys_setgid(k, gid):
    if gid & 0xFFFFFFFF != GID:
        raise GuestErr(errno.EPERM)
    return 0


@syscall("getgroups", "int", "ptr", family="process", note="fixed answer")
def sys_getgroups(k, n, lst):
    if n:
        k.write_mem(lst, struct.pack("<I", GID))
    return 1


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


@syscall("getcpu", "ptr", "ptr", family="process", note="always CPU 0")
def sys_getcpu(k, cpu, node):
    if cpu:
        k.write_mem(cpu, bytes(4))
    if node:
        k.write_mem(node, bytes(4))
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


@syscall("wait4", "int", "ptr", "hex", "ptr", family="process", note="no children (fork is refused): ECHILD")
def sys_wait4(k, pid, status, options, rusage):
    raise GuestErr(errno.ECHILD)


@syscall("waitid", "int", "int", "ptr", "hex", "ptr", family="process", note="no children (fork is refused): ECHILD")
def sys_waitid(k, idtype, id_, info, options, rusage):
    raise GuestErr(errno.ECHILD)


def _refuse(name):
    @syscall(name, "hex", "hex", "hex", family="process", note=f"refused: {REFUSED[name]}")
    def handler(k, a, b, c):
        k.note_once(name, f"{name} is not supported ({REFUSED[name]}); the program gets ENOSYS")
        return -errno.ENOSYS
    return handler


for _name in REFUSED:
    _refuse(_name)
