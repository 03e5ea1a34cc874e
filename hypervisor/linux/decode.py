"""System calls as strace shows them, for `ftvm log show`, `ftvm log stats` and
`ftvm replay --to sys:N`: arguments decoded by kind (the kinds of ``table.SPECS``, with
per-call decoders for clock ids, fcntl commands, ioctl requests, whence, signals, ...),
paths from the record's ``strings``, the first bytes of data the host returned (when the
log carries them), and the result or its errno name. Pure functions of a record.
"""
from __future__ import annotations

import errno
import os
import stat as st
import struct

from . import table
from .sysnames import NAMES

DATA_SHOWN = 32          # bytes of a buffer shown, as strace's default -s 32

CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 2: "CLOCK_PROCESS_CPUTIME_ID", 3: "CLOCK_THREAD_CPUTIME_ID",
          4: "CLOCK_MONOTONIC_RAW", 5: "CLOCK_REALTIME_COARSE", 6: "CLOCK_MONOTONIC_COARSE", 7: "CLOCK_BOOTTIME",
          8: "CLOCK_REALTIME_ALARM", 9: "CLOCK_BOOTTIME_ALARM", 11: "CLOCK_TAI"}
FCNTL = {0: "F_DUPFD", 1: "F_GETFD", 2: "F_SETFD", 3: "F_GETFL", 4: "F_SETFL", 5: "F_GETLK", 6: "F_SETLK",
         7: "F_SETLKW", 8: "F_SETOWN", 9: "F_GETOWN", 36: "F_OFD_GETLK", 37: "F_OFD_SETLK", 38: "F_OFD_SETLKW",
         1024: "F_SETLEASE", 1025: "F_GETLEASE", 1030: "F_DUPFD_CLOEXEC", 1031: "F_SETPIPE_SZ",
         1032: "F_GETPIPE_SZ", 1033: "F_ADD_SEALS", 1034: "F_GET_SEALS"}
IOCTL = {0x5401: "TCGETS", 0x5402: "TCSETS", 0x5403: "TCSETSW", 0x5404: "TCSETSF", 0x540E: "TIOCSCTTY",
         0x540F: "TIOCGPGRP", 0x5410: "TIOCSPGRP", 0x5413: "TIOCGWINSZ", 0x5414: "TIOCSWINSZ",
         0x541B: "FIONREAD", 0x5421: "FIONBIO", 0x5450: "FIONCLEX", 0x5451: "FIOCLEX", 0x5452: "FIOASYNC",
         0x80045430: "TIOCGPTN"}
WHENCE = {0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END", 3: "SEEK_DATA", 4: "SEEK_HOLE"}
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
           8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM",
           15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP",
           21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM",
           27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS"}
SIGHOW = {0: "SIG_BLOCK", 1: "SIG_UNBLOCK", 2: "SIG_SETMASK"}
ARCH_PRCTL = {0x1001: "ARCH_SET_GS", 0x1002: "ARCH_SET_FS", 0x1003: "ARCH_GET_FS", 0x1004: "ARCH_GET_GS",
              0x1011: "ARCH_GET_CPUID", 0x1012: "ARCH_SET_CPUID", 0x3001: "ARCH_CET_STATUS"}
RLIMITS = {i: n for i, n in enumerate(
    ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
     "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
     "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"))}
FUTEX_OPS = {0: "FUTEX_WAIT", 1: "FUTEX_WAKE", 2: "FUTEX_FD", 3: "FUTEX_REQUEUE", 4: "FUTEX_CMP_REQUEUE",
             5: "FUTEX_WAKE_OP", 6: "FUTEX_LOCK_PI", 7: "FUTEX_UNLOCK_PI", 8: "FUTEX_TRYLOCK_PI",
             9: "FUTEX_WAIT_BITSET", 10: "FUTEX_WAKE_BITSET", 11: "FUTEX_WAIT_REQUEUE_PI",
             12: "FUTEX_CMP_REQUEUE_PI", 13: "FUTEX_LOCK_PI2"}
MADVISE = {0: "MADV_NORMAL", 1: "MADV_RANDOM", 2: "MADV_SEQUENTIAL", 3: "MADV_WILLNEED", 4: "MADV_DONTNEED",
           8: "MADV_FREE", 9: "MADV_REMOVE", 10: "MADV_DONTFORK", 11: "MADV_DOFORK", 12: "MADV_MERGEABLE",
           13: "MADV_UNMERGEABLE", 14: "MADV_HUGEPAGE", 15: "MADV_NOHUGEPAGE", 16: "MADV_DONTDUMP",
           17: "MADV_DODUMP", 18: "MADV_WIPEONFORK", 19: "MADV_KEEPONFORK", 20: "MADV_COLD", 21: "MADV_PAGEOUT"}
PRCTL = {1: "PR_SET_PDEATHSIG", 3: "PR_GET_DUMPABLE", 4: "PR_SET_DUMPABLE", 15: "PR_SET_NAME",
         16: "PR_GET_NAME", 22: "PR_SET_SECCOMP", 38: "PR_SET_NO_NEW_PRIVS", 39: "PR_GET_NO_NEW_PRIVS",
         0x59616D61: "PR_SET_PTRACER", 0x53564D41: "PR_SET_VMA"}
FADVISE = {0: "POSIX_FADV_NORMAL", 1: "POSIX_FADV_RANDOM", 2: "POSIX_FADV_SEQUENTIAL", 3: "POSIX_FADV_WILLNEED",
           4: "POSIX_FADV_DONTNEED", 5: "POSIX_FADV_NOREUSE"}
PRIO = {0: "PRIO_PROCESS", 1: "PRIO_PGRP", 2: "PRIO_USER"}
RUSAGE = {0: "RUSAGE_SELF", 0xFFFFFFFFFFFFFFFF: "RUSAGE_CHILDREN", 1: "RUSAGE_THREAD"}

AT_FLAGS = [(0x100, "AT_SYMLINK_NOFOLLOW"), (0x400, "AT_SYMLINK_FOLLOW"), (0x800, "AT_NO_AUTOMOUNT"),
            (0x1000, "AT_EMPTY_PATH"), (0x2000, "AT_STATX_FORCE_SYNC"), (0x4000, "AT_STATX_DONT_SYNC")]
AT_REMOVEDIR = [(0x200, "AT_REMOVEDIR")]
AT_EACCESS = [(0x200, "AT_EACCESS")] + AT_FLAGS
ACCESS = [(4, "R_OK"), (2, "W_OK"), (1, "X_OK")]
GRND = [(1, "GRND_NONBLOCK"), (2, "GRND_RANDOM"), (4, "GRND_INSECURE")]
TIMER = [(1, "TIMER_ABSTIME")]
MREMAP = [(1, "MREMAP_MAYMOVE"), (2, "MREMAP_FIXED"), (4, "MREMAP_DONTUNMAP")]
MSYNC = [(1, "MS_ASYNC"), (2, "MS_INVALIDATE"), (4, "MS_SYNC")]
FLOCK = [(1, "LOCK_SH"), (2, "LOCK_EX"), (4, "LOCK_NB"), (8, "LOCK_UN")]
RENAME = [(1, "RENAME_NOREPLACE"), (2, "RENAME_EXCHANGE"), (4, "RENAME_WHITEOUT")]
FD_FLAGS = [(1, "FD_CLOEXEC")]
STATX_MASK = [(0x7FF, "STATX_BASIC_STATS"), (0x800, "STATX_BTIME"), (0x1000, "STATX_MNT_ID"),
              (0x2000, "STATX_DIOALIGN")]
O_FLAGS = [(0o100000, "O_LARGEFILE")] + table.OPEN_FLAGS    # flags without the access mode (pipe2, dup3)

ADDRESS_RESULTS = {"mmap", "mremap", "brk", "shmat"}       # results shown in hex
DATA_IN = {"readv", "preadv", "preadv2"}                   # fill guest memory, though their buffer is a "ptr"
DATA_OUT = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "sendfile"}
STAT_CALLS = {"stat", "lstat", "fstat", "newfstatat"}
_STAT = struct.Struct("<QQQIIIIQqqq qqqqqq 24x".replace(" ", ""))


def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _s64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def flags(value, names, zero="0"):
    parts, rest = [], value
    for bit, name in names:
        if rest & bit == bit and bit:
            parts.append(name)
            rest &= ~bit
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or zero


def enum(value, names, signed=True):
    v = _s32(value) if signed and value >> 32 in (0, 0xFFFFFFFF) else value
    return names.get(value, names.get(v, str(v)))


def signal_name(v):
    v = _s32(v)
    if v in SIGNALS:
        return SIGNALS[v]
    if 32 <= v <= 64:
        return f"SIGRT_{v - 32}"
    return str(v)


def quote(data, limit=DATA_SHOWN):
    """Bytes (or a str) as a C string, like strace: "hello\\n"... when cut at ``limit``."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    out = []
    for c in data[:limit] if limit is not None else data:
        if c == 0x0A:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        elif c == 0x0D:
            out.append("\\r")
        elif c == 0x22:
            out.append('\\"')
        elif c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    text = '"' + "".join(out) + '"'
    if limit is not None and len(data) > limit:
        text += "..."
    return text


def quote_path(s):
    """A path in full: printable characters (UTF-8 included) as they are."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{o:02x}"))
        elif 0xDC80 <= o <= 0xDCFF:      # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _mode(v):
    return f"0{v & 0o7777:o}" if v & 0o7777 else "000"


def _fd(v):
    s = _s32(v)
    return "AT_FDCWD" if s == -100 else str(s)


def _ptr(v):
    return "NULL" if v == 0 else hex(v)


# Per call: argument index -> decoder(value, args) (overrides the kind in table.SPECS).
def _fcntl_arg(v, args):
    cmd = args[1] & 0xFFFFFFFF
    if cmd == 2:
        return flags(v, FD_FLAGS)
    if cmd == 4:
        return flags(v, O_FLAGS)
    if cmd in (0, 1030, 8, 1031):
        return str(_s32(v))
    if cmd in (1, 3, 9, 1025, 1032, 1034):
        return None              # unused: not shown
    return _ptr(v)


def _futex_op(v, args=None):
    base = v & 0x7F
    name = FUTEX_OPS.get(base, str(base))
    if v & 128:
        name += "_PRIVATE"
    if v & 256:
        name += "|FUTEX_CLOCK_REALTIME"
    return name


def _open_mode(v, args, flags_at):
    fl = args[flags_at] if len(args) > flags_at else 0
    return _mode(v) if fl & 0o100 or fl & 0o20000000 else None      # O_CREAT, O_TMPFILE


ARG_DECODERS = {
    "mmap": {0: lambda v, a: _ptr(v)},
    "openat": {3: lambda v, a: _open_mode(v, a, 2)},
    "open": {2: lambda v, a: _open_mode(v, a, 1)},
    "creat": {1: lambda v, a: _mode(v)},
    "mkdirat": {2: lambda v, a: _mode(v)},
    "mkdir": {1: lambda v, a: _mode(v)},
    "fchmod": {1: lambda v, a: _mode(v)},
    "fchmodat": {2: lambda v, a: _mode(v)},
    "chmod": {1: lambda v, a: _mode(v)},
    "umask": {0: lambda v, a: _mode(v)},
    "clock_gettime": {0: lambda v, a: enum(v, CLOCKS)},
    "clock_getres": {0: lambda v, a: enum(v, CLOCKS)},
    "clock_nanosleep": {0: lambda v, a: enum(v, CLOCKS), 1: lambda v, a: flags(v, TIMER)},
    "fcntl": {1: lambda v, a: enum(v, FCNTL), 2: _fcntl_arg},
    "ioctl": {1: lambda v, a: IOCTL.get(v & 0xFFFFFFFF, hex(v))},
    "lseek": {2: lambda v, a: enum(v, WHENCE)},
    "rt_sigaction": {0: lambda v, a: signal_name(v)},
    "rt_sigprocmask": {0: lambda v, a: enum(v, SIGHOW)},
    "kill": {1: lambda v, a: signal_name(v)},
    "tgkill": {2: lambda v, a: signal_name(v)},
    "tkill": {1: lambda v, a: signal_name(v)},
    "arch_prctl": {0: lambda v, a: enum(v, ARCH_PRCTL)},
    "prlimit64": {1: lambda v, a: enum(v, RLIMITS)},
    "getrlimit": {0: lambda v, a: enum(v, RLIMITS)},
    "setrlimit": {0: lambda v, a: enum(v, RLIMITS)},
    "futex": {1: _futex_op},
    "madvise": {2: lambda v, a: enum(v, MADVISE)},
    "mremap": {3: lambda v, a: flags(v, MREMAP)},
    "msync": {2: lambda v, a: flags(v, MSYNC)},
    "prctl": {0: lambda v, a: enum(v, PRCTL)},
    "fadvise64": {3: lambda v, a: enum(v, FADVISE)},
    "getpriority": {0: lambda v, a: enum(v, PRIO)},
    "setpriority": {0: lambda v, a: enum(v, PRIO)},
    "getrusage": {0: lambda v, a: enum(v, RUSAGE)},
    "flock": {1: lambda v, a: flags(v, FLOCK)},
    "newfstatat": {3: lambda v, a: flags(v, AT_FLAGS)},
    "statx": {2: lambda v, a: flags(v, AT_FLAGS), 3: lambda v, a: flags(v, STATX_MASK)},
    "unlinkat": {2: lambda v, a: flags(v, AT_REMOVEDIR)},
    "faccessat": {2: lambda v, a: flags(v, ACCESS, "F_OK")},
    "faccessat2": {2: lambda v, a: flags(v, ACCESS, "F_OK"), 3: lambda v, a: flags(v, AT_EACCESS)},
    "access": {1: lambda v, a: flags(v, ACCESS, "F_OK")},
    "utimensat": {3: lambda v, a: flags(v, AT_FLAGS)},
    "renameat2": {4: lambda v, a: flags(v, RENAME)},
    "getrandom": {2: lambda v, a: flags(v, GRND)},
    "pipe2": {1: lambda v, a: flags(v, O_FLAGS)},
    "dup3": {2: lambda v, a: flags(v, O_FLAGS)},
    "sched_getaffinity": {0: lambda v, a: str(_s32(v))},
}


def kinds_of(nr, n):
    spec = table.SPECS.get(nr)
    kinds = list(spec[1]) if spec else []
    return (kinds + ["hex"] * n)[:n]


def _arg(kind, v):
    if kind == "fd":
        return _fd(v)
    if kind == "int":
        return str(_s64(v))
    if kind == "size":
        return str(v)
    if kind.startswith("flags:"):
        which = kind[6:]
        if which == "open":
            return table._flags(v & 0xFFFFFFFF, [(0o100000, "O_LARGEFILE")] + table.OPEN_FLAGS, accmode=True)
        return flags(v, table.FLAG_SETS.get(which, []))
    if kind in ("ptr", "buf", "obuf", "path"):
        return _ptr(v)
    return hex(v) if v else "0"


def failed(ret):
    r = _s64(ret)
    return -4096 < r < 0


def errno_name(ret):
    if not failed(ret):
        return None
    code = -_s64(ret)
    return errno.errorcode.get(code, f"E{code}")


def _host_data(values):
    for v in values:
        if isinstance(v, (bytes, bytearray, str)):
            return v
    return None


def _stat_text(b):
    try:
        f = _STAT.unpack(bytes(b))
    except (struct.error, TypeError):
        return None
    mode, size = f[3], f[8]
    kind = {st.S_IFREG: "S_IFREG", st.S_IFDIR: "S_IFDIR", st.S_IFLNK: "S_IFLNK", st.S_IFCHR: "S_IFCHR",
            st.S_IFIFO: "S_IFIFO", st.S_IFSOCK: "S_IFSOCK", st.S_IFBLK: "S_IFBLK"}.get(st.S_IFMT(mode), "0")
    return f"{{st_mode={kind}|{_mode(mode)}, st_size={size}, ...}}"


def decode_args(nr, args, strings=(), values=(), ret=None, read_str=None):
    """The arguments as strace shows them (a list of strings). ``strings``: the record's
    (index, path) pairs; ``values``: its host results (data shown for read-like calls
    that succeeded); ``read_str(addr)``: reads a path from guest memory (a pending call)."""
    name = NAMES.get(nr, "")
    paths = dict(strings or ())
    kinds = kinds_of(nr, len(args))
    special = ARG_DECODERS.get(name, {})
    ok = ret is not None and not failed(ret)
    data = _host_data(values or ()) if ok else None
    out = []
    for i, (kind, v) in enumerate(zip(kinds, args)):
        if i in special:
            text = special[i](v, args)
            if text is None:
                continue
        elif kind == "path" and i in paths:
            text = quote_path(paths[i])
        elif kind == "path" and read_str is not None and v:
            try:
                text = quote_path(read_str(v))
            except Exception:
                text = _ptr(v)
        elif (kind == "obuf" or (name in DATA_IN and i == 1)) and data is not None and ok:
            text = quote(data[:_s64(ret)] if isinstance(data, (bytes, bytearray)) else data)
        elif name in STAT_CALLS and kind == "ptr" and ok and isinstance(data, (bytes, bytearray)):
            text = _stat_text(data) or _ptr(v)
        else:
            text = _arg(kind, v)
        out.append(text)
    return out


def result_text(nr, args, ret):
    """'3', '0x7f…' (addresses), or '-1 ENOENT (No such file or directory)'."""
    r = _s64(ret)
    if failed(ret):
        return f"-1 {errno_name(ret)} ({os.strerror(-r)})"
    name = NAMES.get(nr, "")
    if name in ADDRESS_RESULTS:
        return hex(ret)
    if name == "fcntl" and len(args) > 1 and args[1] & 0xFFFFFFFF == 3:
        return f"{ret:#x} (flags {table._flags(ret, [(0o100000, 'O_LARGEFILE')] + table.OPEN_FLAGS, accmode=True)})"
    if name == "fcntl" and len(args) > 1 and args[1] & 0xFFFFFFFF == 1:
        return f"{ret:#x} (flags {flags(ret, FD_FLAGS)})"
    if name == "umask":
        return _mode(ret)
    return str(r)


def bytes_moved(nr, ret):
    """(bytes into guest memory or from the host, bytes the guest wrote out) by this call."""
    if ret is None or failed(ret):
        return 0, 0
    name = NAMES.get(nr, "")
    n = _s64(ret)
    if name in DATA_OUT:
        return 0, n
    if name in DATA_IN or "obuf" in kinds_of(nr, 6):
        return n, 0
    return 0, 0


def call_name(nr):
    return NAMES.get(nr, f"syscall_{nr}")


def describe(nr, args, ret=None, strings=(), values=(), read_str=None):
    """name(args) = result, strace-like (no result when ``ret`` is None: a pending call)."""
    text = f"{call_name(nr)}({', '.join(decode_args(nr, args, strings, values, ret, read_str))})"
    if ret is not None:
        text += f" = {result_text(nr, args, ret)}"
    return text


def call_dict(rec, call_index):
    """A SYSCALL record's fields for JSON (and the text view)."""
    ret = rec.ret
    b_in, b_out = bytes_moved(rec.nr, ret)
    data = _host_data(rec.values)
    return {
        "blocks": rec.blocks, "pc": rec.pc, "point": f"block {rec.blocks} pc {rec.pc:#x}",
        "syscall_index": call_index, "nr": rec.nr, "name": call_name(rec.nr),
        "args": decode_args(rec.nr, rec.args, rec.strings, rec.values, ret), "raw_args": list(rec.args),
        "strings": {str(i): s for i, s in rec.strings},
        "ret": ret, "result": _s64(ret), "errno": errno_name(ret),
        "bytes_in": b_in, "bytes_out": b_out, "host_values": len(rec.values),
        "data": None if data is None else quote(data, 256),
        "text": describe(rec.nr, rec.args, ret, rec.strings, rec.values),
    }


table.load_families()
